"""The tests' JSON-RPC relay under its older name: see :mod:`tests.relay`."""

from tests.relay import Relay as FlakyRpcProxy
from tests.relay import running_relay as running_rpc_proxy

__all__ = ["FlakyRpcProxy", "running_rpc_proxy"]
