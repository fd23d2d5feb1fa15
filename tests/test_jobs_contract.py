"""The Jobs contract's calls (executor.chain.jobs_contract) against the devnet contract's ABI."""

from __future__ import annotations

from typing import Any

import pytest
from eth_utils import function_signature_to_4byte_selector
from eth_utils.abi import abi_to_signature
from web3 import Web3

from executor.chain.jobs_contract import (
    _KNOWN_ERRORS,
    Refusal,
    classify_revert,
    slash_calldata,
    submit_output_calldata,
    submit_output_gas_bound,
)
from oyster_devnet.contracts import load_artifact


def jobs_contract() -> Any:
    abi, _ = load_artifact("Jobs")
    return Web3().eth.contract(abi=abi)


def devnet_errors() -> dict[str, bytes]:
    abi, _ = load_artifact("Jobs")
    return {
        abi_to_signature(e): function_signature_to_4byte_selector(abi_to_signature(e))
        for e in abi
        if e["type"] == "error"
    }


def test_submit_output_calldata_decodes_with_the_contract_abi() -> None:
    data = submit_output_calldata(b"\x01" * 65, 7, b"out\x00put", 123, 4, 1_700_000_000)
    function, args = jobs_contract().decode_function_input(data)
    assert function.fn_name == "submitOutput"
    assert args == {
        "_signature": b"\x01" * 65,
        "_jobId": 7,
        "_output": b"out\x00put",
        "_totalTime": 123,
        "_errorCode": 4,
        "_signTimestamp": 1_700_000_000,
    }


def test_slash_calldata_decodes_with_the_contract_abi() -> None:
    function, args = jobs_contract().decode_function_input(slash_calldata(2**200))
    assert function.fn_name == "slashOnExecutionTimeout"
    assert args == {"_jobId": 2**200}


PRODUCTION_ERRORS = {
    "JobsDeadlineNotOver()": Refusal.NOT_DUE,
    "JobsInvalidJob()": Refusal.SETTLED,
    "JobsExecutorAlreadySubmittedOutput()": Refusal.SETTLED,
    "JobsExecutionTimeOver()": Refusal.WINDOW_CLOSED,
    "JobsSignatureTooOld()": Refusal.REJECTED,
    "JobsNotSelectedExecutor()": Refusal.REJECTED,
}
"""The production Jobs contract's argument-less errors (not in the devnet contract)."""


def test_every_classified_error_exists_in_the_devnet_contract() -> None:
    assert set(_KNOWN_ERRORS) - set(PRODUCTION_ERRORS) <= set(devnet_errors())


@pytest.mark.parametrize(("error", "refusal"), sorted(PRODUCTION_ERRORS.items()))
def test_production_reverts_are_classified_too(error: str, refusal: Refusal) -> None:
    reason = classify_revert(function_signature_to_4byte_selector(error))
    assert reason.refusal is refusal
    assert reason.name == error.split("(")[0]


@pytest.mark.parametrize(
    ("error", "refusal"),
    [
        ("JobsDeadlineNotOver(uint256)", Refusal.NOT_DUE),
        ("JobsNothingToSlash(uint256)", Refusal.SETTLED),
        ("JobsJobNotFound(uint256)", Refusal.SETTLED),
        ("JobsOutputAlreadySubmitted(uint256,address)", Refusal.SETTLED),
        ("JobsExecutionWindowClosed(uint256)", Refusal.WINDOW_CLOSED),
        ("JobsNotSelectedExecutor(uint256,address)", Refusal.REJECTED),
    ],
)
def test_reverts_are_classified_by_selector(error: str, refusal: Refusal) -> None:
    data = devnet_errors()[error] + b"\x00" * 64
    reason = classify_revert(data)
    assert reason.refusal is refusal
    assert reason.name == error.split("(")[0]
    assert reason.refusal.retryable == (refusal is Refusal.NOT_DUE)


@pytest.mark.parametrize("data", [None, b"", b"\x08\xc3\x79\xa0" + b"\x00" * 96, b"\xde\xad"])
def test_unknown_reverts_are_permanent_and_keep_their_data(data: bytes | None) -> None:
    reason = classify_revert(data)
    assert reason.refusal is Refusal.UNKNOWN
    assert not reason.refusal.retryable
    assert (data or b"").hex() in str(reason)


def test_gas_bound_grows_with_the_calldata() -> None:
    small = submit_output_gas_bound(submit_output_calldata(b"s" * 65, 1, b"", 1, 0, 1))
    big = submit_output_gas_bound(submit_output_calldata(b"s" * 65, 1, b"x" * 20480, 1, 0, 1))
    assert big - small >= 16 * 20480
