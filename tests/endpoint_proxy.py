"""The tests' JSON-RPC relay under its older name: see :mod:`tests.relay`."""

from tests.relay import Relay as HttpProxy
from tests.relay import running_relay as running_http_proxy

__all__ = ["HttpProxy", "running_http_proxy"]
