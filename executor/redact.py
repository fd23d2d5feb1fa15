"""Keep secrets out of the logs, whatever code path formats them.

Secrets known at run time (gas keys, the websocket API key, credentials embedded in RPC URLs) are
registered here; a logging filter installed once by the CLI masks every occurrence in every record,
including exception text from third-party libraries that quote URLs.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

MASK = "***"
_MIN_LENGTH = 6  # shorter strings would mask ordinary words; such keys are not secrets anyway

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its 0x-less / 0x-prefixed form) in every log line from now on."""
    if not value or len(value) < _MIN_LENGTH:
        return
    with _lock:
        _secrets.add(value)
        if value.startswith(("0x", "0X")):
            _secrets.add(value[2:])


def register_url_credentials(url: str) -> None:
    """Register the parts of an RPC URL that commonly carry an API key: path, query, userinfo."""
    parts = urlsplit(url)
    if parts.password:
        register_secret(parts.password)
    for piece in parts.path.split("/"):
        register_secret(piece if len(piece) >= 16 else None)
    register_secret(parts.query if len(parts.query) >= 16 else None)


def redact(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Formats the record's message and exception once, masked, so handlers print only that."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = record.getMessage()
        masked = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install(handler: logging.Handler) -> None:
    handler.addFilter(RedactingFilter())
