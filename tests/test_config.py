"""The operator config: the original executor's keys, validated once with errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from executor.config import Settings
from executor.errors import ConfigError

VALID: dict[str, Any] = {
    "secret_store_config_port": 6002,
    "workerd_runtime_path": "./runtime/",
    "secret_store_path": "../store",
    "common_chain_id": 421614,
    "http_rpc_url": "https://arb-sepolia.example/v2/",
    "web_socket_url": "wss://arb-sepolia.example/v2/",
    "tee_manager_contract_addr": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
    "jobs_contract_addr": "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512",
    "code_contract_addr": "0x9fe46736679d2d9a65f0992f2272de9f3c7fa6e0",
    "enclave_signer_file": "./id.sec",
    "execution_buffer_time": 60,
    "num_selected_executors": 1,
}


def with_(**changes: Any) -> dict[str, Any]:
    return {**VALID, **changes}


def test_valid_config_loads_and_checksums_addresses() -> None:
    s = Settings.from_mapping(VALID)
    assert s.jobs_contract_addr == "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
    assert s.workerd_binary == Path.cwd() / "runtime/workerd"  # a mapping: against the cwd
    assert s.secret_store_config_port == 6002


def test_example_config_is_valid() -> None:
    example = Path(__file__).parents[1] / "config.example.json"
    Settings.load(example)


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"jobs_contract_addr": "0x1234"}, "jobs_contract_addr", "20-byte hex address"),
        ({"code_contract_addr": 7}, "code_contract_addr", ""),
        ({"common_chain_id": "421614"}, "common_chain_id", "must be an integer"),
        ({"common_chain_id": True}, "common_chain_id", "must be an integer"),
        ({"execution_buffer_time": -1}, "execution_buffer_time", "greater than or equal"),
        ({"num_selected_executors": 0}, "num_selected_executors", "greater than"),
        ({"http_rpc_url": "ws://x/"}, "http_rpc_url", "http or https URL"),
        ({"web_socket_url": "https://x/"}, "web_socket_url", "ws or wss URL"),
        ({"secret_store_config_port": 70000}, "secret_store_config_port", "less than"),
    ],
)
def test_bad_values_name_the_key(changes: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        Settings.from_mapping(with_(**changes))
    assert e.value.key == key
    assert f"'{key}'" in str(e.value)
    assert fragment in str(e.value)


@pytest.mark.parametrize("missing", ["jobs_contract_addr", "enclave_signer_file", "http_rpc_url"])
def test_missing_key_is_named(missing: str) -> None:
    data = dict(VALID)
    del data[missing]
    with pytest.raises(ConfigError, match=f"'{missing}': is required but missing"):
        Settings.from_mapping(data)


@pytest.mark.parametrize("port", [None, "absent"])
def test_secret_store_port_is_optional(port: Any) -> None:
    data = dict(VALID)
    if port == "absent":
        del data["secret_store_config_port"]
    else:
        data["secret_store_config_port"] = port
    assert Settings.from_mapping(data).secret_store_config_port is None


def test_unknown_keys_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    Settings.from_mapping(with_(jobs_contract_adr="typo", Common_Chain_Id=1))
    assert "jobs_contract_adr" in caplog.text
    assert "Common_Chain_Id" in caplog.text
    assert Settings.from_mapping(with_(Common_Chain_Id=1)).common_chain_id == 421614


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Settings.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        Settings.load(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(VALID))
    assert Settings.load(good).common_chain_id == 421614


@pytest.mark.parametrize(
    ("url", "key", "expected"),
    [
        ("wss://host/v2/", "KEY", "wss://host/v2/KEY"),
        ("wss://host/v2/OLD", "NEW", "wss://host/v2/NEW"),
        ("ws://127.0.0.1:8545", "abc", "ws://127.0.0.1:8545/abc"),
        ("ws://127.0.0.1:8545/", "", "ws://127.0.0.1:8545/"),
        ("ws://127.0.0.1:8545", "", "ws://127.0.0.1:8545/"),  # as the original: ends in /
        ("wss://host/v2/OLD", "", "wss://host/v2/"),
    ],
)
def test_ws_api_key_goes_after_the_last_slash(url: str, key: str, expected: str) -> None:
    assert Settings.from_mapping(with_(web_socket_url=url)).ws_url_with_key(key) == expected


def test_rpc_urls_may_be_one_or_a_list() -> None:
    one = Settings.from_mapping(VALID)
    assert one.http_rpc_urls == ("https://arb-sepolia.example/v2/",)
    many = Settings.from_mapping(
        with_(
            http_rpc_url=["http://a:1/", "https://b/v2/"],
            web_socket_url=["ws://a:1/", "wss://b/v2/"],
        )
    )
    assert many.http_rpc_urls == ("http://a:1/", "https://b/v2/")
    assert many.ws_urls_with_key("K") == ("ws://a:1/K", "wss://b/v2/K")
    assert many.ws_url_with_key("K") == "ws://a:1/K"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([], "non-empty JSON list"),
        (5, "non-empty JSON list"),
        (["http://a/", "ftp://b/"], "entry 1: must be a http or https URL"),
    ],
)
def test_bad_rpc_url_lists_name_the_key_and_entry(value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        Settings.from_mapping(with_(http_rpc_url=value))
    assert e.value.key == "http_rpc_url"
    assert fragment in str(e.value)


# --- environment overrides (OYSTER_EXECUTOR_<KEY>): environment > file > defaults ------------

ORIGINAL_EXECUTOR_FILE = """{
  "secret_store_config_port": 6002,
  "workerd_runtime_path": "./runtime/",
  "secret_store_path": "../store",
  "common_chain_id": 421614,
  "http_rpc_url": "https://arb-sepolia.g.alchemy.com/v2/",
  "web_socket_url": "wss://arb-sepolia.g.alchemy.com/v2/",
  "tee_manager_contract_addr": "0xFbc9cB063848Db801B382A1Da13E5A213dD378c0",
  "jobs_contract_addr": "0x4e3F2A2b2C3b6eA3B5F7b0B8d1A0F93b3E7D8e3C",
  "code_contract_addr": "0x44fe06d2940b8782a0a9a9ffd09c65852c0156b1",
  "enclave_signer_file": "./id.sec",
  "execution_buffer_time": 60,
  "num_selected_executors": 1
}
"""
"""The original executor's key set, as an operator's existing file holds it."""


def test_original_executor_file_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "oyster_serverless_executor_config.json"
    path.write_text(ORIGINAL_EXECUTOR_FILE)
    s = Settings.load(path)
    assert s.common_chain_id == 421614
    assert s.http_rpc_urls == ("https://arb-sepolia.g.alchemy.com/v2/",)
    assert s.ws_url_with_key("KEY") == "wss://arb-sepolia.g.alchemy.com/v2/KEY"
    assert s.code_contract_addr.lower() == "0x44fe06d2940b8782a0a9a9ffd09c65852c0156b1"
    assert (s.warm_workers, s.metrics_addr) == (None, None)  # optional keys keep their defaults
    assert (s.job_fetch_limit, s.job_fetch_bytes_limit) == (0, 0)  # no outbound budget: off


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OYSTER_EXECUTOR_COMMON_CHAIN_ID", "31337")
    monkeypatch.setenv("OYSTER_EXECUTOR_ENCLAVE_SIGNER_FILE", "/run/keys/id.sec")
    monkeypatch.setenv("OYSTER_EXECUTOR_JOBS_CONTRACT_ADDR", "0x" + "ab" * 20)
    monkeypatch.setenv("oyster_executor_num_selected_executors", "3")  # names are case-blind
    s = Settings.from_mapping(VALID)
    assert s.common_chain_id == 31337
    assert s.enclave_signer_file == Path("/run/keys/id.sec")
    assert s.jobs_contract_addr.lower() == "0x" + "ab" * 20
    assert s.num_selected_executors == 3
    assert s.execution_buffer_time == 60  # not overridden: the file's value


def test_environment_overrides_defaults_and_fills_missing_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = dict(VALID)
    del data["execution_buffer_time"]
    monkeypatch.setenv("OYSTER_EXECUTOR_EXECUTION_BUFFER_TIME", "15")
    monkeypatch.setenv("OYSTER_EXECUTOR_WARM_WORKERS", "0")
    monkeypatch.setenv("OYSTER_EXECUTOR_SECRET_STORE_CONFIG_PORT", "null")
    monkeypatch.setenv("OYSTER_EXECUTOR_METRICS_ADDR", "127.0.0.1:9102")
    s = Settings.from_mapping(data)
    assert s.execution_buffer_time == 15
    assert s.warm_workers == 0
    assert s.secret_store_config_port is None
    assert s.metrics_addr == "127.0.0.1:9102"


def test_url_lists_come_from_the_environment_as_json_or_one_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "OYSTER_EXECUTOR_HTTP_RPC_URL", '["https://a.example/", "https://b.example/"]'
    )
    monkeypatch.setenv("OYSTER_EXECUTOR_WEB_SOCKET_URL", "wss://c.example/v2/")
    s = Settings.from_mapping(VALID)
    assert s.http_rpc_urls == ("https://a.example/", "https://b.example/")
    assert s.web_socket_urls == ("wss://c.example/v2/",)


@pytest.mark.parametrize(
    ("var", "value", "key", "fragment"),
    [
        ("OYSTER_EXECUTOR_COMMON_CHAIN_ID", "mainnet", "common_chain_id", "must be an integer"),
        ("OYSTER_EXECUTOR_HTTP_RPC_URL", '["https://a/", "ws://b/"]', "http_rpc_url", "entry 1"),
        ("OYSTER_EXECUTOR_HTTP_RPC_URL", "[not json", "http_rpc_url", "http or https URL"),
        ("OYSTER_EXECUTOR_METRICS_ADDR", "9102", "metrics_addr", "HOST:PORT"),
    ],
)
def test_bad_environment_values_name_the_key_and_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, key: str, fragment: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as e:
        Settings.from_mapping(VALID)
    assert e.value.key == key
    assert fragment in str(e.value)
    assert f"environment variable {var}" in str(e.value)
    assert str(e.value).startswith(f"config key '{key}': ")


def test_other_prefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # admin init reads OYSTER_EXECUTOR_GAS_KEY; it is not a config key and must not break loading.
    monkeypatch.setenv("OYSTER_EXECUTOR_GAS_KEY", "0x" + "11" * 32)
    monkeypatch.setenv("OYSTER_EXECUTOR_NO_SUCH_KEY", "whatever")
    monkeypatch.setenv("COMMON_CHAIN_ID", "1")  # unprefixed: never read
    s = Settings.from_mapping(VALID)
    assert s.common_chain_id == 421614
    assert not hasattr(s, "gas_key")


def test_example_config_loads_with_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OYSTER_EXECUTOR_COMMON_CHAIN_ID", "421614")
    example = Path(__file__).parents[1] / "config.example.json"
    assert Settings.load(example).common_chain_id == 421614


def test_relative_paths_resolve_against_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "node"
    folder.mkdir()
    path = folder / "config.json"
    path.write_text(json.dumps(VALID))  # ./runtime/, ../store, relative key file
    monkeypatch.chdir(tmp_path.anchor)
    s = Settings.load(path)
    assert s.workerd_runtime_path == folder / "runtime"
    assert s.workerd_binary == folder / "runtime" / "workerd"
    assert s.secret_store_path == tmp_path / "store"  # ".." folded
    assert s.enclave_signer_file == folder / "id.sec"


def test_relative_paths_from_the_environment_resolve_against_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(VALID))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OYSTER_EXECUTOR_WORKERD_RUNTIME_PATH", "here/rt")
    assert Settings.load(path).workerd_runtime_path == tmp_path / "here" / "rt"


@pytest.mark.parametrize("value", ["", "  ", "a\x00b"])
def test_empty_or_nul_paths_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"workerd_runtime_path.*non-empty path"):
        Settings.from_mapping(with_(workerd_runtime_path=value))


def test_a_blank_path_in_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(with_(secret_store_path="  ")))
    with pytest.raises(ConfigError, match=r"secret_store_path.*non-empty path"):
        Settings.load(path)
