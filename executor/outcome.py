"""What one job ends in: exactly one ``JobOutcome`` carrying a protocol error code."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

MAX_OUTPUT_BYTES = 20 * 1024
"""Outputs up to and including 20480 bytes are submitted; larger ones end in OUTPUT_TOO_LARGE."""


class ErrorCode(IntEnum):
    """The uint8 ``errorCode`` submitted with a job output (docs/protocol.md §3)."""

    OK = 0
    CODE_TX_NOT_FOUND = 1
    INVALID_CALLDATA = 2
    SYNTAX_ERROR = 3
    DEADLINE_EXCEEDED = 4
    OUTPUT_TOO_LARGE = 5

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ErrorCode.OK: "executed; the output is the worker's response body",
    ErrorCode.CODE_TX_NOT_FOUND: "code transaction not found, or not sent to the UserCode contract",
    ErrorCode.INVALID_CALLDATA: "calldata is not a valid saveCodeInCallData call",
    ErrorCode.SYNTAX_ERROR: "syntax error in the code (workerd failed to start)",
    ErrorCode.DEADLINE_EXCEEDED: "the deadline passed before a response",
    ErrorCode.OUTPUT_TOO_LARGE: f"the response is larger than {MAX_OUTPUT_BYTES} bytes",
}


@dataclass(frozen=True)
class JobOutcome:
    """The result to sign and submit: output bytes, error code and total time in ms.

    ``logs`` carries what the worker printed (stdout + stderr, bounded); it is for local runs and
    debugging only and never leaves the machine.
    """

    output: bytes
    error_code: ErrorCode
    total_time_ms: int
    logs: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.error_code != ErrorCode.OK and self.output:
            raise ValueError(f"error code {self.error_code.name} must carry an empty output")
        if self.total_time_ms < 0:
            raise ValueError("total_time_ms must not be negative")

    @classmethod
    def failed(cls, code: ErrorCode, total_time_ms: int, logs: str = "") -> JobOutcome:
        return cls(output=b"", error_code=code, total_time_ms=total_time_ms, logs=logs)
