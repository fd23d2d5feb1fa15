"""The Jobs contract's calls, in one place (docs/protocol.md §1-§2).

* ``submitOutput`` and ``slashOnExecutionTimeout`` calldata;
* the ``SubmitOutput`` EIP-712 typed data (field order, type hash, digest) and its signature;
* a gas bound for ``submitOutput`` from its calldata alone: the floor under an output's gas limit
  (the limit itself is estimated, or learned for owners without code: see ``TxManager``);
* the contract's refusals: a revert's data is classified by its 4-byte selector (never by the
  message text) into what the caller should do about it.

The devnet contract's custom errors are known by name. The production contracts may use other
names: an unknown revert is ``Refusal.UNKNOWN``, which callers treat as permanent (and log raw).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from eth_abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_utils import function_signature_to_4byte_selector, keccak

from executor.chain.enclave_key import EnclaveKey, domain_separator, typed_digest

JOBS_DOMAIN = "marlin.oyster.Jobs"

SUBMIT_OUTPUT_FIELDS: tuple[tuple[str, str], ...] = (
    ("jobId", "uint256"),
    ("output", "bytes"),
    ("totalTime", "uint256"),
    ("errorCode", "uint8"),
    ("signTimestamp", "uint256"),
)
"""``SubmitOutput``'s members in order; ``submitOutput``'s arguments are the signature + these."""

_SUBMIT_OUTPUT_TYPE = "SubmitOutput(" + ",".join(f"{t} {n}" for n, t in SUBMIT_OUTPUT_FIELDS) + ")"
SUBMIT_OUTPUT_TYPEHASH = keccak(text=_SUBMIT_OUTPUT_TYPE)
_JOBS_SEPARATOR = domain_separator(JOBS_DOMAIN)

SUBMIT_OUTPUT_SIGNATURE = "submitOutput(bytes," + ",".join(t for _, t in SUBMIT_OUTPUT_FIELDS) + ")"
SUBMIT_OUTPUT_SELECTOR = function_signature_to_4byte_selector(SUBMIT_OUTPUT_SIGNATURE)
SLASH_SELECTOR = function_signature_to_4byte_selector("slashOnExecutionTimeout(uint256)")

SUBMIT_OUTPUT_GAS_BASE = 300_000
"""Gas for everything in ``submitOutput`` but the bytes: signature recovery, status writes, the
production contract's payments. The devnet contract uses ~56k with an empty output."""
SUBMIT_OUTPUT_GAS_PER_BYTE = 64
"""Per calldata byte: 16 (calldata) + 8 (the output in the JobResponded log) + hashing, copies and
memory. The devnet contract uses ~39 per byte (846k gas for a 20 KiB output): 64 leaves room for a
contract that copies the output once more. Only the gas used is paid; the bound only needs to be
covered by the account's balance at the fee cap."""


def submit_output_digest(
    job_id: int, output: bytes, total_time: int, error_code: int, sign_timestamp: int
) -> bytes:
    """EIP-712 digest of ``SubmitOutput`` in the ``marlin.oyster.Jobs`` domain."""
    struct_hash = keccak(
        encode(
            ["bytes32", "uint256", "bytes32", "uint256", "uint8", "uint256"],
            [
                SUBMIT_OUTPUT_TYPEHASH,
                job_id,
                keccak(output),
                total_time,
                error_code,
                sign_timestamp,
            ],
        )
    )
    return typed_digest(_JOBS_SEPARATOR, struct_hash)


def sign_output(
    key: EnclaveKey,
    job_id: int,
    output: bytes,
    total_time: int,
    error_code: int,
    sign_timestamp: int,
) -> bytes:
    """The enclave's 65-byte signature of one job output."""
    return key.sign_digest(
        submit_output_digest(job_id, output, total_time, error_code, sign_timestamp)
    )


def submit_output_calldata(
    signature: bytes,
    job_id: int,
    output: bytes,
    total_time: int,
    error_code: int,
    sign_timestamp: int,
) -> bytes:
    return SUBMIT_OUTPUT_SELECTOR + encode(
        ["bytes", *(t for _, t in SUBMIT_OUTPUT_FIELDS)],
        [signature, job_id, output, total_time, error_code, sign_timestamp],
    )


@dataclass(frozen=True)
class SubmitOutputCall:
    """The arguments of one ``submitOutput`` call, as decoded from its calldata."""

    signature: bytes
    job_id: int
    output: bytes
    total_time: int
    error_code: int
    sign_timestamp: int

    def digest(self) -> bytes:
        """The ``SubmitOutput`` digest of what this call claims was signed."""
        return submit_output_digest(
            self.job_id, self.output, self.total_time, self.error_code, self.sign_timestamp
        )


def decode_submit_output_calldata(calldata: bytes) -> SubmitOutputCall | None:
    """The arguments of a ``submitOutput`` call; None when ``calldata`` is not one."""
    if calldata[:4] != SUBMIT_OUTPUT_SELECTOR:
        return None
    try:
        values = decode(["bytes", *(t for _, t in SUBMIT_OUTPUT_FIELDS)], calldata[4:])
    except (DecodingError, OverflowError, ValueError):
        return None
    signature, job_id, output, total_time, error_code, sign_timestamp = values
    return SubmitOutputCall(
        bytes(signature), job_id, bytes(output), total_time, error_code, sign_timestamp
    )


def submit_output_gas_bound(calldata: bytes) -> int:
    """A gas limit that covers ``submitOutput`` with this calldata (only gas used is paid)."""
    return SUBMIT_OUTPUT_GAS_BASE + SUBMIT_OUTPUT_GAS_PER_BYTE * len(calldata)


RESULT_CALLBACK_SELECTOR = function_signature_to_4byte_selector(
    "oysterResultCall(uint256,bytes,uint8,uint256)"
)
FAILURE_CALLBACK_SELECTOR = function_signature_to_4byte_selector(
    "oysterFailureCall(uint256,uint256)"
)


def result_callback_calldata(job_id: int, output: bytes, error_code: int, total_time: int) -> bytes:
    """What the Jobs contract calls the job owner with on the first output."""
    return RESULT_CALLBACK_SELECTOR + encode(
        ["uint256", "bytes", "uint8", "uint256"], [job_id, output, error_code, total_time]
    )


def failure_callback_calldata(job_id: int, slashed: int = 0) -> bytes:
    """What the Jobs contract calls the job owner with when an unanswered job is slashed."""
    return FAILURE_CALLBACK_SELECTOR + encode(["uint256", "uint256"], [job_id, slashed])


def slash_calldata(job_id: int) -> bytes:
    return SLASH_SELECTOR + encode(["uint256"], [job_id])


class Refusal(enum.Enum):
    """What a revert of submitOutput / slashOnExecutionTimeout means for the caller."""

    NOT_DUE = "not-due"
    """The window has not closed yet: a slash sent too early. Worth retrying at the chain's pace."""
    SETTLED = "settled"
    """Already done: output already submitted, nothing left to slash, job gone (slashed/unknown)."""
    WINDOW_CLOSED = "window-closed"
    """The output arrived after the contract's window: it can never land."""
    REJECTED = "rejected"
    """The contract refuses this executor or signature (not selected, not active, too old, ...)."""
    UNKNOWN = "unknown"
    """A revert this module does not know (e.g. another contract version): treat as permanent."""

    @property
    def retryable(self) -> bool:
        return self is Refusal.NOT_DUE


_KNOWN_ERRORS: dict[str, Refusal] = {
    "JobsDeadlineNotOver(uint256)": Refusal.NOT_DUE,
    "JobsNothingToSlash(uint256)": Refusal.SETTLED,
    "JobsJobNotFound(uint256)": Refusal.SETTLED,
    "JobsOutputAlreadySubmitted(uint256,address)": Refusal.SETTLED,
    "JobsExecutionWindowClosed(uint256)": Refusal.WINDOW_CLOSED,
    "JobsSignatureTooOld(uint256,uint256)": Refusal.REJECTED,
    "JobsNotSelectedExecutor(uint256,address)": Refusal.REJECTED,
    "JobsExecutorNotActive(address)": Refusal.REJECTED,
    "SignatureInvalid()": Refusal.REJECTED,
    "SignatureInvalidLength(uint256)": Refusal.REJECTED,
    "SignatureInvalidV(uint8)": Refusal.REJECTED,
    "SignatureMalleable()": Refusal.REJECTED,
    # The production Jobs contract's errors carry no arguments, so their selectors differ.
    "JobsDeadlineNotOver()": Refusal.NOT_DUE,
    "JobsInvalidJob()": Refusal.SETTLED,
    "JobsExecutorAlreadySubmittedOutput()": Refusal.SETTLED,
    "JobsExecutionTimeOver()": Refusal.WINDOW_CLOSED,
    "JobsSignatureTooOld()": Refusal.REJECTED,
    "JobsNotSelectedExecutor()": Refusal.REJECTED,
}
_BY_SELECTOR: dict[bytes, tuple[str, Refusal]] = {
    function_signature_to_4byte_selector(sig): (sig.split("(")[0], refusal)
    for sig, refusal in _KNOWN_ERRORS.items()
}


@dataclass(frozen=True)
class RevertReason:
    refusal: Refusal
    name: str
    """The custom error's name, or ``unknown``."""
    data: bytes

    def __str__(self) -> str:
        if self.refusal is Refusal.UNKNOWN:
            return f"unknown revert (data 0x{self.data.hex()})"
        return f"{self.name} ({self.refusal.value})"


def classify_revert(data: bytes | None) -> RevertReason:
    """What the revert ``data`` (selector + ABI arguments) says, by its selector alone."""
    raw = data or b""
    name, refusal = _BY_SELECTOR.get(raw[:4], ("unknown", Refusal.UNKNOWN))
    return RevertReason(refusal, name, raw)
