"""Secrets never reach the logs, even through third-party exception text."""

from __future__ import annotations

import io
import logging

import pytest

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


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("http://127.0.0.1:8545/", "http://127.0.0.1:8545"),
        ("https://rpc.example.org/v2/0123456789abcdef0123", "https://rpc.example.org/***"),
        ("wss://rpc.example.org/ws/v3/k", "wss://rpc.example.org/***"),  # short keys too
        ("https://user:pw123456@rpc.example:8545/v3/x?apikey=zzz", "https://rpc.example:8545/***"),
        ("https://KEY0123456789@rpc.example/", "https://rpc.example"),  # a key as the user name
        ("https://rpc.example/?apikey=zzz", "https://rpc.example/***"),
        ("https://rpc.example#zzz", "https://rpc.example/***"),
        ("http://[::1]:8545/key", "http://[::1]:8545/***"),
        ("HTTPS://RPC.Example.ORG/Key", "https://rpc.example.org/***"),
        ("http://[::1/key", redact.MASK),  # does not parse: nothing of it is shown
        ("http://host:99999/key", redact.MASK),
        ("not a url", redact.MASK),
        ("", redact.MASK),
    ],
)
def test_url_keeps_scheme_host_and_port_only(given: str, shown: str) -> None:
    assert redact.url(given) == shown


def test_url_masks_registered_secrets_in_the_host_too() -> None:
    secret = "hostsecret" + "q" * 8
    redact.register_secret(secret)
    assert redact.url(f"https://{secret}.rpc.example/x") == f"https://{redact.MASK}.rpc.example/***"


def test_in_text_shows_a_quoted_url_redacted() -> None:
    url = "wss://rpc.example/ws/key-in-path-0123"
    text = f"Cannot connect to host rpc.example:443 ssl:default [{url}]"
    shown = redact.in_text(text, url)
    assert "key-in-path-0123" not in shown
    assert "[wss://rpc.example/***]" in shown
    assert redact.in_text("no url here", "") == "no url here"
