"""An optional outbound budget per job: how many ``fetch`` calls, how many bytes received.

Off by default: other executors have no such limit, and a job that hits it gets a result they
would not give. An operator who wants one sets ``job_fetch_limit`` / ``job_fetch_bytes_limit``
(docs/operator.md). Then every worker of a job (cold: the job's own worker; warm: the isolate the
loader builds) has its outbound ``fetch`` routed through a small worker of ours in the same
process (workerd's ``globalOutbound``), which counts the calls and the response bytes and makes
the call (or the body read) fail once the budget is spent. That worker forwards what it lets
through to workerd's default network, whose rules (loopback and private addresses refused) stay
as they were. One process serves one job, so the counters are that job's.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVICE = "oyster-outbound"
"""The name of the counting worker's service in a job's config."""


@dataclass(frozen=True)
class OutboundBudget:
    """``fetches``: calls allowed; ``received``: response body bytes allowed (0: no limit)."""

    fetches: int = 0
    received: int = 0

    def __post_init__(self) -> None:
        if self.fetches < 0 or self.received < 0:
            raise ValueError("an outbound budget cannot be negative")

    @property
    def active(self) -> bool:
        return self.fetches > 0 or self.received > 0

    def worker_js(self) -> str:
        """The counting worker, on one line (a config string literal carries it)."""
        return (
            f"const MAX_FETCHES = {int(self.fetches)}; const MAX_BYTES = {int(self.received)}; "
            "let fetches = 0; let received = 0; "
            "export default { async fetch(request) { "
            "fetches += 1; "
            "if (MAX_FETCHES > 0 && fetches > MAX_FETCHES) "
            "throw new Error('outbound budget: more than ' + MAX_FETCHES + ' fetches'); "
            "const response = await fetch(request); "
            "if (MAX_BYTES === 0 || response.body === null) return response; "
            "const counted = new TransformStream({ transform(chunk, controller) { "
            "received += chunk.byteLength; "
            "if (received > MAX_BYTES) { controller.error(new Error("
            "'outbound budget: more than ' + MAX_BYTES + ' bytes received')); return; } "
            "controller.enqueue(chunk); } }); "
            "return new Response(response.body.pipeThrough(counted), response); } };"
        )
