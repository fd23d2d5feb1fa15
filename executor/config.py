"""The operator's JSON config file (PROTOCOL §6) as one validated settings model.

The keys and their meaning are those of the original executor's config file, so existing
operator files work unchanged. Validation happens once, at start-up, and every error names the
key and the reason. Building ``Settings`` does no I/O beyond reading the JSON file; keys and
cgroups are loaded by the parts that own them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from eth_utils import is_hex_address, to_checksum_address
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from executor.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = Path("./oyster_serverless_executor_config.json")
DEFAULT_SHUTDOWN_GRACE_S = 30.0
"""How long running jobs may finish after the first SIGTERM (``serve --shutdown-grace``)."""


def _checksum_address(value: str) -> str:
    if not isinstance(value, str) or not is_hex_address(value):
        raise ValueError("must be a 20-byte hex address (0x followed by 40 hex digits)")
    return to_checksum_address(value)


def _url_with_scheme(*schemes: str) -> AfterValidator:
    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"must be a {' or '.join(schemes)} URL, got {value!r}")
        return value

    return AfterValidator(check)


def _one_or_many(value: Any) -> Any:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value:
        return tuple(value)
    raise ValueError("must be a URL string or a non-empty JSON list of URL strings")


Address = Annotated[str, AfterValidator(_checksum_address)]
HttpUrl = Annotated[str, _url_with_scheme("http", "https")]
WsUrl = Annotated[str, _url_with_scheme("ws", "wss")]
HttpUrls = Annotated[tuple[HttpUrl, ...], BeforeValidator(_one_or_many)]
"""One URL (the original executor's form) or a list of them, tried in order (failover)."""
WsUrls = Annotated[tuple[WsUrl, ...], BeforeValidator(_one_or_many)]


class Settings(BaseModel):
    """Everything the operator configures. Field names are the JSON keys."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)

    secret_store_config_port: int | None = Field(default=None, ge=1, le=65535)
    workerd_runtime_path: Path
    secret_store_path: Path
    common_chain_id: int = Field(gt=0)
    http_rpc_url: HttpUrls
    web_socket_url: WsUrls
    tee_manager_contract_addr: Address
    jobs_contract_addr: Address
    code_contract_addr: Address
    enclave_signer_file: Path
    execution_buffer_time: int = Field(ge=0)
    num_selected_executors: int = Field(gt=0)

    # Optional keys added by this project (absent from the original executor's files).
    warm_workers: int | None = Field(default=None, ge=0)
    """How many free slices keep a warmed workerd ready for the next job: None = every slice,
    0 = none (every job spawns workerd cold)."""

    @field_validator(
        "common_chain_id",
        "execution_buffer_time",
        "num_selected_executors",
        "secret_store_config_port",
        "warm_workers",
        mode="before",
    )
    @classmethod
    def _integers_only(cls, value: Any) -> Any:
        # JSON true/false and 1.5 are not numbers an operator means; "1" is a typo worth flagging.
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ValueError(f"must be an integer, got {type(value).__name__} {value!r}")

    @property
    def workerd_binary(self) -> Path:
        return self.workerd_runtime_path / "workerd"

    @property
    def http_rpc_urls(self) -> tuple[str, ...]:
        """The HTTP JSON-RPC endpoints, in the order they are tried."""
        return self.http_rpc_url

    @property
    def web_socket_urls(self) -> tuple[str, ...]:
        """The websocket JSON-RPC endpoints (without the API key), in the order they are tried."""
        return self.web_socket_url

    def ws_urls_with_key(self, api_key: str) -> tuple[str, ...]:
        """Every websocket endpoint with the API key put after its last ``/``."""
        return tuple(ws_url_with_key(url, api_key) for url in self.web_socket_urls)

    def ws_url_with_key(self, api_key: str) -> str:
        """The first websocket endpoint with the API key (what ``/tee-details`` reports)."""
        return ws_url_with_key(self.web_socket_urls[0], api_key)

    @classmethod
    def from_mapping(cls, data: Any) -> Settings:
        if not isinstance(data, dict):
            raise ConfigError("(root)", f"must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            logger.warning("config: ignoring unknown keys %s", ", ".join(unknown))
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise _first_error(e, data) from e

    @classmethod
    def load(cls, path: Path) -> Settings:
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError("(file)", f"cannot read {path}: {e.strerror or e}") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                "(file)", f"{path} is not valid JSON: {e.msg} at line {e.lineno}"
            ) from e
        return cls.from_mapping(data)


def ws_url_with_key(url: str, api_key: str) -> str:
    """The websocket URL with the API key put after its last ``/`` (PROTOCOL §6).

    ``wss://host/v2/`` + ``KEY`` gives ``wss://host/v2/KEY``; a URL without a path gets one.
    """
    if not api_key:
        return url
    scheme, _, rest = url.partition("://")
    head = rest.rpartition("/")[0] if "/" in rest else rest
    return f"{scheme}://{head}/{api_key}"


def _first_error(e: ValidationError, data: dict[str, Any]) -> ConfigError:
    err = e.errors()[0]
    loc = err["loc"]
    key = str(loc[0]) if loc else "(root)"
    if err["type"] == "missing":
        return ConfigError(key, "is required but missing")
    message = err["msg"].removeprefix("Value error, ")
    if len(loc) > 1 and isinstance(loc[1], int) and isinstance(data.get(key), list):
        message = f"entry {loc[1]}: {message}"
    extra = f" ({len(e.errors()) - 1} more error(s))" if len(e.errors()) > 1 else ""
    return ConfigError(key, message + extra)
