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
    assert s.workerd_binary == Path("runtime/workerd")
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
    Settings.from_mapping(with_(jobs_contract_adr="typo"))
    assert "jobs_contract_adr" in caplog.text


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
