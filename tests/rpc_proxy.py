"""The tests' JSON-RPC relay under its older name: see :mod:`tests.relay`."""

from tests.relay import Relay as RpcProxy
from tests.relay import running_relay as running_rpc_proxy

__all__ = ["RpcProxy", "running_rpc_proxy"]
