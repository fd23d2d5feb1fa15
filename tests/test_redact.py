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
