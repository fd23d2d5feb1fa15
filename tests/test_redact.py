"""Secrets never reach the logs, even through third-party exception text."""

from __future__ import annotations

import io
import logging

from executor import redact

KEY = "0x" + "ab12" * 16


def capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    redact.install(handler)
    logger = logging.getLogger(f"redact-test-{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_registered_secrets_are_masked_in_messages_args_and_tracebacks() -> None:
    redact.register_secret(KEY)
    redact.register_url_credentials("https://rpc.example/v2/SuperSecretApiKey123456")
    logger, stream = capture()
    logger.info("gas key %s in use", KEY)
    logger.info("bare form %s", KEY[2:])
    try:
        raise ValueError("404 at url='https://rpc.example/v2/SuperSecretApiKey123456'")
    except ValueError:
        logger.exception("rpc failed")
    out = stream.getvalue()
    assert KEY[2:] not in out
    assert "SuperSecretApiKey123456" not in out
    assert out.count(redact.MASK) >= 3
    assert "https://rpc.example/v2/***" in out


def test_short_strings_are_not_treated_as_secrets() -> None:
    redact.register_secret("ab")
    assert redact.redact("about") == "about"


def test_hex_secrets_are_masked_in_any_case_with_or_without_prefix() -> None:
    key = "0x" + "c0ffee" * 10 + "abcd"
    redact.register_secret(key)
    digits = key[2:]
    for spelling in (digits, digits.upper(), "0x" + digits, "0X" + digits.upper(), digits.title()):
        masked = redact.redact(f"before {spelling} after")
        assert digits.lower() not in masked.lower(), spelling
        assert masked.startswith("before ") and masked.endswith(" after")


def test_every_handler_sees_masked_records_even_without_the_filter() -> None:
    secret = "plain-secret-" + "xyz" * 4
    redact.register_secret(secret)  # installs the record factory
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # a third-party handler: no RedactingFilter
    logger = logging.getLogger("redact-test-bare")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.debug("debug %s", secret)
    try:
        raise RuntimeError(f"library text quoting {secret.upper()} and {secret}")
    except RuntimeError:
        logger.exception("failed")
    logger.removeHandler(handler)
    out = stream.getvalue()
    assert secret not in out
    assert out.count(redact.MASK) >= 3


def test_url_masks_credentials_query_and_long_path_segments() -> None:
    url = "https://user:pw123456@rpc.example:8545/v3/0123456789abcdef0123?apikey=zzz"
    shown = redact.url(url)
    assert "pw123456" not in shown and "0123456789abcdef0123" not in shown and "zzz" not in shown
    assert shown.startswith("https://user:***@rpc.example:8545/v3/***")
    assert redact.url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
