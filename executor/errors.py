"""The project's exception hierarchy: one root, stdlib types mixed in where the meaning matches.

Job failures that the protocol names (error codes 1-5) are *values* (see ``executor.outcome``), not
exceptions; these classes are for everything else.
"""

from __future__ import annotations


class ExecutorError(Exception):
    """Root of every error raised on purpose by oyster-executor."""


class ConfigError(ExecutorError, ValueError):
    """The operator config (or a command-line value) is invalid."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"config key '{key}': {reason}")


class UsageError(ExecutorError, ValueError):
    """A command was given arguments it cannot work with (exit status 2)."""


class KeyFileError(ExecutorError, ValueError):
    """A key file is missing, unreadable or malformed."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"key file {path}: {reason}")


class SandboxError(ExecutorError):
    """Running code failed for a reason the protocol has no error code for (no submission)."""

    reason = "not_executed"
    """The ``reason`` label of the jobs-not-submitted metric."""


class WorkerdCrashError(SandboxError):
    """workerd ended during a job without evidence that the job exhausted its memory: a host
    fault, not the job's doing (no submission, as for any ``SandboxError``)."""

    reason = "workerd_crashed"


class NoFreeSliceError(SandboxError):
    """Every cgroup slice is busy or out of service."""


class SliceSetupError(SandboxError):
    """The cgroup slices are missing or unusable."""


class ArmError(SandboxError):
    """A warm slice could not be armed (the warm pool logs it and retries; no job sees it)."""


class ChainError(ExecutorError):
    """Talking to the chain failed (RPC unreachable, transaction reverted, ...)."""


class AdminError(ExecutorError):
    """An admin API request was rejected; the message is safe to return to the caller."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class SecretStoreError(ExecutorError):
    """The enclave's secret store could not be reached or answered badly."""


class RawTxError(ExecutorError, ValueError):
    """Transaction bytes (or the JSON they are rebuilt from) cannot be decoded or re-encoded."""


class TxHashMismatch(RawTxError):
    """Bytes served as a transaction do not hash to that transaction's hash: a lying RPC."""

    def __init__(self, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"bytes hash to 0x{actual}, not to the requested 0x{expected}")


class AdminClientError(ExecutorError):
    """The admin client could not do what it was asked (bad input, executor unreachable, ...)."""


class AdminRefused(AdminClientError):
    """The executor answered an admin request with a non-200 status."""

    def __init__(self, method: str, path: str, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{method} {path} -> {status}: {reason}")
