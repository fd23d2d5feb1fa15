"""Fuzzing the admin API: adversarial bodies for /immutable-config and /mutable-config, parsed
directly and sent to a real daemon over a real socket. Every answer is 200, 400 or 413 with a
reason; a rejected request forwards nothing to the secret store; the daemon keeps serving.
Profiles: tests/fuzz_profiles.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.admin.inputs import MAX_BODY_BYTES, parse_immutable, parse_mutable
from executor.errors import AdminError
from oyster_devnet.accounts import DEV_ACCOUNTS
from tests.admin_node import AdminNode, admin_node
from tests.fuzz_profiles import examples

pytestmark = pytest.mark.chain

GAS_KEY = DEV_ACCOUNTS[2].private_key
FIELDS = ("owner_address_hex", "executor_gas_key", "secret_store_gas_key", "ws_api_key")

hexish = st.text(alphabet="0123456789abcdefABCDEFxX \n-+_g", max_size=70)
near_keys = st.builds(
    lambda prefix, digits: prefix + digits,
    st.sampled_from(["", "0x", "0X", " 0x", "0x0x"]),
    st.text(alphabet="0123456789abcdef", min_size=38, max_size=66),
)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
values = st.recursive(
    scalars | hexish | near_keys | st.just(GAS_KEY),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), values, max_size=5)
bodies = (
    objects.map(lambda o: json.dumps(o).encode())
    | values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
    | objects.map(lambda o: json.dumps(o).encode()).flatmap(
        lambda raw: st.integers(0, len(raw)).map(lambda cut: raw[:cut])
    )
)


@settings(max_examples=examples(200))
@given(bodies)
def test_parsers_accept_or_name_the_problem(raw: bytes) -> None:
    for parse in (parse_immutable, parse_mutable, partial(parse_mutable, store_key_required=False)):
        try:
            parse(raw)
        except AdminError as e:
            assert e.status in (400, 413) and str(e)


def test_oversize_is_413_whatever_the_content() -> None:
    with pytest.raises(AdminError) as caught:
        parse_mutable(b" " * (MAX_BODY_BYTES + 1))
    assert caught.value.status == 413


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AdminNode]:
    async with admin_node(tmp_path_factory.mktemp("fuzz-admin")) as n:
        yield n


@pytest.mark.asyncio(loop_scope="module")
async def test_admin_endpoints_under_fuzzing(node: AdminNode) -> None:
    loop = asyncio.get_running_loop()

    def call(path: str, raw: bytes) -> Any:
        future = asyncio.run_coroutine_threadsafe(node.client.request("POST", path, raw=raw), loop)
        return future.result(timeout=30)

    @settings(max_examples=examples(120))
    @given(st.sampled_from(["/immutable-config", "/mutable-config"]), bodies)
    def one_request(path: str, raw: bytes) -> None:
        forwarded = len(node.store.calls)
        response = call(path, raw)
        assert response.status in (200, 400, 413), (response.status, response.text)
        assert response.text.strip(), "every answer carries a reason"
        if response.status != 200:
            assert len(node.store.calls) == forwarded, "a rejected request reached the store"

    await asyncio.to_thread(one_request)
    assert (await node.client.request("GET", "/")).status == 200
    details = await node.client.request("GET", "/tee-details")
    assert details.status == 200
