"""Running untrusted JavaScript in workerd: :class:`Sandbox` (:mod:`.core`) is the entry point.

Inside: :mod:`.admission` queues jobs for slots, :mod:`.paths` runs one job warm or cold,
:mod:`.warm` keeps slices armed, :mod:`.workerd` starts and watches one workerd process,
:mod:`.cgroups` holds the slices, :mod:`.loader` / :mod:`.capnp_config` are the configs,
:mod:`.locate` finds the workerd executable.
"""

from executor.sandbox.core import Sandbox

__all__ = ["Sandbox"]
