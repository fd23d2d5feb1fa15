"""Prometheus metrics of one daemon, served on their own opt-in address (never the admin socket).

Each daemon owns a ``Metrics`` with its own registry, so several daemons can run in one process
(the tests do). The parts that produce a fact call one clearly named method of the ``Metrics``
they were given (``metrics.transaction("output", "mined")``); parts built without one get
``NO_METRICS``, which records into a registry nobody serves. Gauges of state that already lives
somewhere (slices, the node's state) are read at scrape time from that owner, so they never drift.

Names and labels (docs/operator.md "Monitoring"):

- ``oyster_executor_job_outcomes_total{error_code}``: outcomes reached, by protocol error code;
- ``oyster_executor_jobs_not_submitted_total{reason}``: jobs that ended without a submitted output;
- ``oyster_executor_job_duration_seconds``: from the job's start to its summary line;
- ``oyster_executor_slices{state="free|busy|out_of_service"}``;
- ``oyster_executor_sandbox_runs_total{path="warm|cold"}``: executions by sandbox path;
- ``oyster_executor_transactions_total{kind="output|slash",result}``;
- ``oyster_executor_output_gas_limits_total{source="estimate|learned|ceiling|given"}``: how each
  output transaction's gas limit was chosen;
- ``oyster_executor_ws_reconnects_total``, ``oyster_executor_last_block``;
- ``oyster_executor_node_state{state}``: 1 for the node's current state, 0 for the others;
- ``oyster_executor_part_up{part}``: 1 while a supervised part is up (``executor.supervisor``);
- ``oyster_executor_part_failures_total{part}``, ``oyster_executor_part_restarts_total{part}``.
- ``oyster_executor_info{version}`` (always 1), ``oyster_executor_healthy`` (1 or 0, what
  ``GET /health`` says), ``oyster_executor_gas_balance_wei`` (the gas account's last read balance),
  ``oyster_executor_jobs_in_flight`` (executions running now).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PREFIX = "oyster_executor"
NODE_STATES = ("idle", "awaiting-registration", "active", "drained")
JOB_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class SliceCounts(Protocol):
    """What the slices gauge reads from the pool (``SlicePool`` has these)."""

    @property
    def slices(self) -> Sequence[object]: ...

    @property
    def capacity(self) -> int: ...

    @property
    def free_count(self) -> int: ...

    @property
    def runs(self) -> Mapping[str, int]:
        """Executions so far by sandbox path (``warm``, ``cold``)."""
        ...


class PartStates(Protocol):
    """What the part gauge reads from the supervisor (``Supervisor`` has these)."""

    def parts(self) -> Mapping[str, Mapping[str, Any]]: ...


class Metrics:
    """The daemon's metrics; every method is cheap and never raises."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._outcomes = Counter(
            f"{PREFIX}_job_outcomes",
            "Job outcomes reached, by protocol error code",
            ["error_code"],
            registry=r,
        )
        self._not_submitted = Counter(
            f"{PREFIX}_jobs_not_submitted",
            "Jobs this executor was selected for that ended without a submitted output",
            ["reason"],
            registry=r,
        )
        self._duration = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "Time from a job's start (event seen) to its end (output submitted or given up)",
            buckets=JOB_DURATION_BUCKETS,
            registry=r,
        )
        self._transactions = Counter(
            f"{PREFIX}_transactions",
            "Transactions sent, by kind (output, slash) and result",
            ["kind", "result"],
            registry=r,
        )
        self._gas_estimate = Histogram(
            f"{PREFIX}_gas_estimate_seconds",
            "Time of one eth_estimateGas before an output or slash is sent (on its critical path)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self._output_gas_limits = Counter(
            f"{PREFIX}_output_gas_limits",
            "Output transactions by how their gas limit was chosen: estimate (eth_estimateGas), "
            "learned (the job owner holds no code), ceiling (the node could not estimate it)",
            ["source"],
            registry=r,
        )
        for source in ("estimate", "learned"):
            self._output_gas_limits.labels(source=source)  # shown at 0 before the first output
        self._ws_reconnects = Counter(
            f"{PREFIX}_ws_reconnects", "Websocket (re)connections after a drop", registry=r
        )
        self._last_block = Gauge(
            f"{PREFIX}_last_block", "Highest block number the event stream has reached", registry=r
        )
        self._part_failures = Counter(
            f"{PREFIX}_part_failures", "Failures of a supervised part", ["part"], registry=r
        )
        self._part_restarts = Counter(
            f"{PREFIX}_part_restarts", "Restarts of a supervised part", ["part"], registry=r
        )
        self._state = _StateCollector()
        r.register(self._state)

    # --- events (one call at the code point where the fact happens) ----------------------------

    def job_outcome(self, error_code: int) -> None:
        self._outcomes.labels(error_code=str(int(error_code))).inc()

    def job_not_submitted(self, reason: str) -> None:
        self._not_submitted.labels(reason=reason).inc()

    def job_finished(self, duration_s: float) -> None:
        self._duration.observe(max(0.0, duration_s))

    def transaction(self, kind: str, result: str) -> None:
        """``kind`` is output or slash; ``result`` mined, rejected or failed."""
        self._transactions.labels(kind=kind, result=result).inc()

    def gas_estimate(self, duration_s: float) -> None:
        self._gas_estimate.observe(max(0.0, duration_s))

    def output_gas_limit(self, source: str) -> None:
        """One output transaction about to be sent, its limit chosen by ``source``."""
        self._output_gas_limits.labels(source=source).inc()

    def ws_reconnect(self) -> None:
        self._ws_reconnects.inc()

    def last_block(self, number: int) -> None:
        self._last_block.set(number)

    def part_failed(self, part: str) -> None:
        self._part_failures.labels(part=part).inc()

    def part_restarted(self, part: str) -> None:
        self._part_restarts.labels(part=part).inc()

    # --- state read at scrape time -------------------------------------------------------------

    def watch_parts(self, parts: PartStates | None) -> None:
        self._state.parts = parts

    def watch_slices(self, pool: SliceCounts | None) -> None:
        self._state.slices = pool

    def watch_node_state(self, state: Callable[[], str]) -> None:
        self._state.node_state = state

    def watch_health(
        self,
        *,
        version: str,
        healthy: Callable[[], bool],
        gas_balance_wei: Callable[[], int | None],
        jobs_in_flight: Callable[[], int],
    ) -> None:
        self._state.version = version
        self._state.healthy = healthy
        self._state.gas_balance_wei = gas_balance_wei
        self._state.jobs_in_flight = jobs_in_flight

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.slices: SliceCounts | None = None
        self.node_state: Callable[[], str] | None = None
        self.parts: PartStates | None = None
        self.version: str | None = None
        self.healthy: Callable[[], bool] | None = None
        self.gas_balance_wei: Callable[[], int | None] | None = None
        self.jobs_in_flight: Callable[[], int] | None = None

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        slices = GaugeMetricFamily(f"{PREFIX}_slices", "cgroup slices by state", labels=["state"])
        if self.slices is not None:
            total = len(self.slices.slices)
            free = self.slices.free_count
            in_service = self.slices.capacity
            slices.add_metric(["free"], free)
            slices.add_metric(["busy"], in_service - free)
            slices.add_metric(["out_of_service"], total - in_service)
        yield slices
        runs = CounterMetricFamily(
            f"{PREFIX}_sandbox_runs", "Executions by sandbox path", labels=["path"]
        )
        if self.slices is not None:
            for path in ("warm", "cold"):
                runs.add_metric([path], self.slices.runs.get(path, 0))
        yield runs
        node = GaugeMetricFamily(
            f"{PREFIX}_node_state", "1 for the node's current state", labels=["state"]
        )
        if self.node_state is not None:
            current = self.node_state()
            for state in NODE_STATES:
                node.add_metric([state], 1.0 if state == current else 0.0)
        yield node
        up = GaugeMetricFamily(
            f"{PREFIX}_part_up", "1 while a supervised part is up", labels=["part"]
        )
        if self.parts is not None:
            for name, part in self.parts.parts().items():
                up.add_metric([name], 1.0 if part.get("up") else 0.0)
        yield up
        if self.version is not None:
            info = GaugeMetricFamily(
                f"{PREFIX}_info", "The executor's version (always 1)", labels=["version"]
            )
            info.add_metric([self.version], 1.0)
            yield info
        if self.healthy is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_healthy",
                "1 when the node can serve (GET /health answers 200), 0 otherwise",
                value=1.0 if self.healthy() else 0.0,
            )
        if self.gas_balance_wei is not None:
            balance = self.gas_balance_wei()
            if balance is not None:
                yield GaugeMetricFamily(
                    f"{PREFIX}_gas_balance_wei",
                    "The executor gas account's balance when last read",
                    value=float(balance),
                )
        if self.jobs_in_flight is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_jobs_in_flight",
                "Job executions running now",
                value=float(self.jobs_in_flight()),
            )


NO_METRICS = Metrics()
"""For parts built without a daemon (tests, ``oyster-executor run``): recorded, never served."""


def metrics_app(metrics: Metrics) -> web.Application:
    """An aiohttp app serving ``GET /metrics`` (and nothing else)."""

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
