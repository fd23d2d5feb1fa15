"""Running untrusted JavaScript in workerd: :class:`Sandbox` (:mod:`.core`) is the entry point.

Inside: :mod:`.admission` queues jobs for slots, :mod:`.paths` runs one job warm or cold,
:mod:`.warm` keeps slices armed, :mod:`.workerd` starts and watches one workerd process,
:mod:`.cgroups` holds the slices, :mod:`.loader` / :mod:`.capnp_config` are the configs,
:mod:`.locate` finds the workerd executable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from executor.sandbox.core import Sandbox

__all__ = ["Sandbox"]


def __getattr__(name: str) -> Any:
    """``Sandbox`` is imported on first use, so that a submodule (e.g. :mod:`.workerd`) can be
    imported alone, without the HTTP client and the configs the whole sandbox needs."""
    if name == "Sandbox":
        from executor.sandbox.core import Sandbox

        return Sandbox
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
