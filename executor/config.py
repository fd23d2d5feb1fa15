"""The operator's config (docs/protocol.md §6) as one validated settings model.

The JSON file keeps the keys and meaning of the original executor's config file, so existing
operator files work unchanged. Every key can also be set by an environment variable named
``OYSTER_EXECUTOR_<KEY>`` (``OYSTER_EXECUTOR_COMMON_CHAIN_ID=421614``); numbers, ``null`` and URL
lists are written as JSON (``OYSTER_EXECUTOR_HTTP_RPC_URL='["https://a/", "https://b/"]'``), a
single URL or a path as plain text. Precedence: environment > file > defaults. Only variables with
that prefix naming a config key are read; others (``OYSTER_EXECUTOR_GAS_KEY`` of ``admin init``)
are ignored.

Relative paths (``workerd_runtime_path``, ``secret_store_path``, ``enclave_signer_file``) are
resolved once, at load: those in the file against the file's folder, those given by the
environment (or by a mapping without a file) against the working directory. Every path a
``Settings`` holds is absolute, so the daemon works from any working directory.

Validation happens once, at start-up, and every error names the key and the reason (and the
environment variable when the value came from one). Building ``Settings`` does no I/O beyond
reading the JSON file; keys and cgroups are loaded by the parts that own them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from eth_utils import is_hex_address, to_checksum_address
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.types import EnvNoneType

from executor.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = Path("./oyster_serverless_executor_config.json")
ENV_PREFIX = "OYSTER_EXECUTOR_"
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


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    return value


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
HostPort = Annotated[str, AfterValidator(_host_port)]

_JSON_VALUED = frozenset(
    {
        "secret_store_config_port",
        "common_chain_id",
        "execution_buffer_time",
        "num_selected_executors",
        "warm_workers",
        "max_job_gas",
        "job_fetch_limit",
        "job_fetch_bytes_limit",
    }
)
"""Keys whose environment value is read as JSON (numbers and null); URL keys take JSON lists."""
_URL_LISTS = frozenset({"http_rpc_url", "web_socket_url"})
PATH_KEYS = ("workerd_runtime_path", "secret_store_path", "enclave_signer_file")
"""Keys holding paths: relative ones are resolved at load (see the module docstring)."""


def absolute_path(path: Path, base: Path | None = None) -> Path:
    """``path`` made absolute against ``base`` (default: the working directory), ``..`` folded;
    symlinks are kept (the runtime folder's ``workerd`` is often one)."""
    return Path(os.path.normpath(Path(base or Path.cwd()) / path.expanduser()))


class _EnvSource(EnvSettingsSource):
    """``OYSTER_EXECUTOR_<KEY>`` variables, decoded as the JSON file would hold them.

    Numbers and ``null`` are JSON; a URL key takes one plain URL or a JSON list; paths, addresses
    and the like are taken as written. A value that does not decode is passed on as text so that
    validation names the key and the reason, as for the file.
    """

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        if not isinstance(value, str) or isinstance(value, EnvNoneType):
            return value  # EnvNoneType: the text "null", which sets the key to null
        text = value.strip()
        if field_name in _JSON_VALUED or (field_name in _URL_LISTS and text.startswith("[")):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return value
        return value


class Settings(BaseSettings):
    """Everything the operator configures. Field names are the JSON keys.

    Build it with :meth:`load` (a file) or :meth:`from_mapping` (a dict); either way
    ``OYSTER_EXECUTOR_<KEY>`` environment variables override the given values.
    """

    model_config = SettingsConfigDict(
        extra="ignore",
        frozen=True,
        strict=False,
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        env_parse_none_str="null",
    )

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
    metrics_addr: HostPort | None = None
    """Serve Prometheus metrics on this HOST:PORT (``serve --metrics-addr`` overrides it)."""
    max_job_gas: int = Field(default=30_000_000, ge=1_000_000, le=1_000_000_000)
    """The most gas one output or slash may be given (the Jobs contract calls the job owner's
    callback with all the gas left): a job whose callback needs more is not answered, and logged
    at ERROR. Only the gas used is paid; the gas account must hold this much at the fee cap."""
    job_fetch_limit: int = Field(default=0, ge=0)
    """Outbound ``fetch`` calls a job may make (0: no limit, the default, as other executors)."""
    job_fetch_bytes_limit: int = Field(default=0, ge=0)
    """Response body bytes a job's fetches may receive in all (0: no limit, the default)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first (it wins), then the file's values (passed as init arguments).
        # No .env file and no secrets folder: the enclave has neither.
        return (_EnvSource(settings_cls), init_settings)

    @field_validator(
        "common_chain_id",
        "execution_buffer_time",
        "num_selected_executors",
        "secret_store_config_port",
        "warm_workers",
        "max_job_gas",
        "job_fetch_limit",
        "job_fetch_bytes_limit",
        mode="before",
    )
    @classmethod
    def _integers_only(cls, value: Any) -> Any:
        # JSON true/false and 1.5 are not numbers an operator means; "1" is a typo worth flagging.
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ValueError(f"must be an integer, got {type(value).__name__} {value!r}")

    @field_validator(*PATH_KEYS, mode="before")
    @classmethod
    def _path_text(cls, value: Any) -> Any:
        if isinstance(value, str) and (not value.strip() or "\x00" in value):
            raise ValueError("must be a non-empty path")
        return value

    @field_validator(*PATH_KEYS, mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Paths from the file arrive already resolved against its folder (load); what is left
        # relative came from the environment or a mapping: the working directory is its base.
        return absolute_path(value)

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
    def from_mapping(cls, data: Any, *, base: Path | None = None) -> Settings:
        """Settings from ``data`` (the file's JSON object); relative paths in it are resolved
        against ``base`` (the config file's folder) or, without one, the working directory."""
        if not isinstance(data, dict):
            raise ConfigError("(root)", f"must be a JSON object, got {type(data).__name__}")
        if base is not None:
            data = {
                k: str(absolute_path(Path(v), base)) if k in PATH_KEYS and _is_path(v) else v
                for k, v in data.items()
            }
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            logger.warning("config: ignoring unknown keys %s", ", ".join(unknown))
        overridden = env_overrides()
        if overridden:
            logger.info("config: keys set by the environment: %s", ", ".join(sorted(overridden)))
        try:
            # Only the exact key names: the settings machinery would also match other spellings.
            return cls(**{k: v for k, v in data.items() if k in cls.model_fields})
        except ValidationError as e:
            raise _first_error(e, data, overridden) from e

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
        return cls.from_mapping(data, base=absolute_path(path).parent)


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != "" and "\x00" not in value


def env_var(key: str) -> str:
    """The environment variable that overrides config key ``key``."""
    return ENV_PREFIX + key.upper()


def env_overrides() -> dict[str, str]:
    """Config keys set by the environment, mapped to the variable that sets each."""
    present = {name.upper() for name in os.environ}
    return {key: env_var(key) for key in Settings.model_fields if env_var(key) in present}


def _env_value(name: str) -> str:
    return next((v for k, v in os.environ.items() if k.upper() == name), "")


def ws_url_with_key(url: str, api_key: str) -> str:
    """The websocket URL with the API key put after its last ``/`` (docs/protocol.md §6).

    ``wss://host/v2/`` + ``KEY`` gives ``wss://host/v2/KEY``; a URL without a path gets one.
    An empty key leaves the URL ending in ``/``, as the original executor does.
    """
    scheme, _, rest = url.partition("://")
    head = rest.rpartition("/")[0] if "/" in rest else rest
    return f"{scheme}://{head}/{api_key}"


def _first_error(
    e: ValidationError, data: dict[str, Any], overridden: dict[str, str]
) -> ConfigError:
    err = e.errors()[0]
    loc = err["loc"]
    key = str(loc[0]) if loc else "(root)"
    if key in overridden:
        given_as_list = _env_value(overridden[key]).lstrip().startswith("[")
    else:
        given_as_list = isinstance(data.get(key), list)
    if err["type"] == "missing":
        return ConfigError(key, "is required but missing")
    message = err["msg"].removeprefix("Value error, ")
    if len(loc) > 1 and isinstance(loc[1], int) and given_as_list:
        message = f"entry {loc[1]}: {message}"
    if key in overridden:
        message += f" (set by environment variable {overridden[key]})"
    extra = f" ({len(e.errors()) - 1} more error(s))" if len(e.errors()) > 1 else ""
    return ConfigError(key, message + extra)
