"""Keep secrets out of the logs, whatever code path formats them.

Secrets known at run time (the enclave key, gas keys, the websocket API key, credentials embedded in
RPC URLs) are registered here. They are masked at two levels:

- a log record factory (installed with the first registered secret) masks the message, its
  arguments and any exception text as the record is made, so *every* handler sees masked text
  (test capture handlers and third-party handlers included), at every level;
- a handler filter does the same again for records made before the factory was installed.

Secrets are masked in any letter case; a hex secret also with or without its ``0x`` prefix.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

MASK = "***"
_MIN_LENGTH = 6  # shorter strings would mask ordinary words; such keys are not secrets anyway
_HEX = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)")

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log line from now on (hex: any case, with or without ``0x``)."""
    if not value:
        return
    match = _HEX.fullmatch(value)
    core = match.group(1) if match else value
    if len(core) < _MIN_LENGTH:
        return
    global _pattern
    with _lock:
        if core in _secrets:
            return
        _secrets.add(core)
        _pattern = _compile(_secrets)
    install_record_factory()  # from the first secret on, every record is masked as it is made


def register_url_credentials(url: str) -> None:
    """Register the parts of an RPC URL that commonly carry an API key: path, query, userinfo."""
    parts = urlsplit(url)
    if parts.password:
        register_secret(parts.password)
    for piece in parts.path.split("/"):
        register_secret(piece if len(piece) >= 16 else None)
    register_secret(parts.query if len(parts.query) >= 16 else None)


def _compile(secrets: set[str]) -> re.Pattern[str]:
    # Longest first, so a secret that contains another is masked whole.
    ordered = sorted(secrets, key=len, reverse=True)
    return re.compile("|".join(re.escape(secret) for secret in ordered), re.IGNORECASE)


def redact(text: str) -> str:
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def url(value: str) -> str:
    """An endpoint URL fit for a log line or a reply: ``scheme://host[:port]``, the rest masked.

    The one rule for every URL the executor names (RPC and websocket endpoints alike): the host
    and port stay, because operators need to know which endpoint failed; everything else may
    carry an API key, so userinfo is dropped and any path, query or fragment becomes ``/***``.
    A URL that does not parse is masked whole. Registered secrets are masked too.
    """
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    where = f"{host}:{port}" if port is not None else host
    tail = "/" + MASK if parts.path.strip("/") or parts.query or parts.fragment else ""
    return redact(f"{parts.scheme}://{where}{tail}")


def in_text(text: str, value: str) -> str:
    """``text`` (e.g. a library's error message) with ``value`` shown as ``url(value)``."""
    if value:
        text = text.replace(value, url(value))
    return redact(text)


def _redact_record(record: logging.LogRecord) -> None:
    """Mask the record's message (args merged in) and exception text, in place."""
    if _pattern is None:
        return
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: let logging report it as usual
        return
    masked = redact(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """Masks registered secrets in a record before its handler prints it."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


_factory_installed = False


def install_record_factory() -> None:
    """Mask every record as it is made, whichever handler will print it (idempotent)."""
    global _factory_installed
    with _lock:
        if _factory_installed:
            return
        previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def install(handler: logging.Handler) -> None:
    """Mask secrets in everything ``handler`` prints, and in every record made from now on."""
    install_record_factory()
    handler.addFilter(RedactingFilter())
