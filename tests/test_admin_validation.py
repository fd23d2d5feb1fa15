"""Admin input is checked in full before any side effect: a rejected request forwards nothing to the
secret store and changes nothing in the executor; the reply names the field and the problem."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from executor.admin.inputs import MAX_BODY_BYTES, parse_mutable
from executor.errors import AdminError
from oyster_devnet.accounts import DEV_ACCOUNTS
from tests.admin_node import AdminNode, admin_node

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.chain]

OWNER = DEV_ACCOUNTS[1].address
GAS_KEY = DEV_ACCOUNTS[2].private_key
STORE_KEY = DEV_ACCOUNTS[4].private_key
SECP256K1_N = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
ZERO = "0x" + "00" * 20


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AdminNode]:
    async with admin_node(tmp_path_factory.mktemp("admin")) as n:
        yield n


def mutable(**changes: object) -> bytes:
    body: dict[str, object] = {
        "executor_gas_key": GAS_KEY,
        "secret_store_gas_key": STORE_KEY,
        "ws_api_key": "key-1",
    }
    body.update(changes)
    return json.dumps(body).encode()


BAD_IMMUTABLE = [
    (
        b'{"owner_address_hex": "%s", "extra": 1}' % OWNER.encode(),
        400,
        "unexpected field(s) 'extra'",
    ),
    (b'{"owner_address_hex": null}', 400, "must be a string, got null"),
    (b'{"owner_address_hex": ["0x"]}', 400, "must be a string, got an array"),
    (b'{"owner_address_hex": true}', 400, "must be a string, got a boolean"),
    (
        b'{"owner_address_hex": "%s", "owner_address_hex": "%s"}'
        % (OWNER.encode(), OWNER.encode()),
        400,
        "appears twice",
    ),
    (b'{"owner_address_hex": " ' + b"00" * 20 + b'"}', 400, "not a valid hex string"),
    (b'{"owner_address_hex": "' + b"0" * 39 + b'"}', 400, "not a valid hex string"),
    (b'{"owner_address_hex": "%s"}' % ZERO.encode(), 400, "zero address"),
    (b"\xff\xfe{}", 400, "not valid JSON"),
    (b"[" * 10_000 + b"]" * 10_000, 400, "must be a JSON object"),
    (b'"just a string"', 400, "must be a JSON object"),
    (b"", 400, "not valid JSON"),
    (b'{"owner_address_hex": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}', 413, "larger than"),
]

BAD_MUTABLE = [
    (mutable(secret_store_gas_key=""), "field 'secret_store_gas_key' must be 32 bytes long, got 0"),
    (
        mutable(secret_store_gas_key="00"),
        "field 'secret_store_gas_key' must be 32 bytes long, got 1",
    ),
    (mutable(secret_store_gas_key="zz" * 32), "field 'secret_store_gas_key' is not a valid hex"),
    (
        mutable(secret_store_gas_key="00" * 32),
        "field 'secret_store_gas_key' is not a valid secp256k1",
    ),
    (
        mutable(secret_store_gas_key=SECP256K1_N),
        "field 'secret_store_gas_key' is not a valid secp256k1",
    ),
    (
        mutable(secret_store_gas_key=" " + STORE_KEY[2:]),
        "'secret_store_gas_key' is not a valid hex",
    ),
    (mutable(executor_gas_key=SECP256K1_N), "field 'executor_gas_key' is not a valid secp256k1"),
    (mutable(executor_gas_key=5), "field 'executor_gas_key' must be a string, got a number"),
    (mutable(ws_api_key="a" * 300), "field 'ws_api_key': longer than 256"),
    (mutable(ws_api_key="a\nb"), "API key contains invalid characters"),
    (mutable(ws_api_key={"k": 1}), "field 'ws_api_key' must be a string, got an object"),
    (mutable(gas_key_hex=GAS_KEY), "unexpected field(s) 'gas_key_hex'"),
    (b'{"executor_gas_key": "%s"}' % GAS_KEY.encode(), "'secret_store_gas_key' is required"),
]


async def test_rejected_requests_change_nothing_and_reach_no_one(node: AdminNode) -> None:
    before = (await node.client.expect_ok("GET", "/tee-details")).json()
    for raw, status, message in BAD_IMMUTABLE:
        response = await node.client.request("POST", "/immutable-config", raw=raw)
        assert (response.status, message in response.text) == (status, True), (
            raw[:80],
            response.text,
        )
    for raw, message in BAD_MUTABLE:
        response = await node.client.request("POST", "/mutable-config", raw=raw)
        assert (response.status, message in response.text) == (400, True), response.text
        for secret in (GAS_KEY, STORE_KEY, GAS_KEY[2:], STORE_KEY[2:], SECP256K1_N):
            assert secret not in response.text.lower()
    assert node.store.calls == []
    assert (await node.client.expect_ok("GET", "/tee-details")).json() == before
    assert (await node.client.request("GET", "/")).status == 200
    registration = await node.client.request("GET", "/signed-registration-message")
    assert registration.status == 400


async def test_valid_requests_keep_the_original_replies(node: AdminNode) -> None:
    ok = await node.client.request("POST", "/immutable-config", {"owner_address_hex": OWNER})
    assert (ok.status, ok.text) == (200, "Immutable params configured!\n")
    ok = await node.client.request("POST", "/mutable-config", raw=mutable())
    assert (ok.status, ok.text) == (200, "Mutable params configured!\n")
    assert node.store.calls[-1] == ("mutable", {"gas_key_hex": STORE_KEY, "ws_api_key": "key-1"})
    again = await node.client.request("POST", "/immutable-config", {"owner_address_hex": OWNER})
    assert (again.status, again.text) == (400, "Immutable params already configured!\n")


async def test_without_a_secret_store_the_store_key_may_be_empty_but_not_malformed() -> None:
    config = parse_mutable(mutable(secret_store_gas_key=""), store_key_required=False)
    assert config.secret_store_gas_key == ""
    with pytest.raises(AdminError, match="'secret_store_gas_key'"):
        parse_mutable(mutable(secret_store_gas_key="00"), store_key_required=False)
    with pytest.raises(AdminError, match="'secret_store_gas_key'"):
        parse_mutable(mutable(secret_store_gas_key=""))
