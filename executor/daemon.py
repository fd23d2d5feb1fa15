"""The daemon: owns the event loop's lifetime, starts the parts in order, stops them in reverse.

Order: settings -> enclave key -> cgroup slices + sandbox -> chain clients -> service -> admin site
-> metrics site (opt-in, its own TCP address: never the admin socket).
The first SIGTERM/SIGINT stops taking jobs and lets running ones finish within a bound; a second
one forces the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from executor import __version__, redact
from executor.admin.app import build_admin_app
from executor.admin.secret_store import SecretStoreClient
from executor.admin.sites import ListenAddress, VsockSite, parse_tcp_addr
from executor.chain.enclave_key import EnclaveKey
from executor.chain.rpc import RpcEndpoints
from executor.config import DEFAULT_SHUTDOWN_GRACE_S, Settings
from executor.errors import ConfigError, ExecutorError
from executor.health import CHAIN_GRACE_S, NodeHealth, PartsDown, SandboxWatch, no_parts_down
from executor.metrics import Metrics, metrics_app
from executor.outcome import JobOutcome
from executor.sandbox import Sandbox
from executor.sandbox.cgroups import SlicePool
from executor.sandbox.outbound import OutboundBudget
from executor.service import ExecutorService
from executor.supervisor import Supervisor

logger = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        listen: ListenAddress,
        *,
        cgroup_parent: Path | None = None,
        unconfined: bool = False,
        shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S,
        metrics_addr: str | None = None,
        parts_down: PartsDown = no_parts_down,
        startup_canary: bool = False,
        chain_grace_s: float = CHAIN_GRACE_S,
        user_logs: bool = False,
    ) -> None:
        """``parts_down`` feeds the health (part name -> reason, e.g. a supervisor's);
        ``startup_canary`` runs a known-good job at start-up (``serve`` does) so that the health
        knows at once whether the sandbox works."""
        self.settings = settings
        self._parts_down = parts_down
        self._startup_canary = startup_canary
        self._chain_grace_s = chain_grace_s
        self.health: NodeHealth | None = None
        self._user_logs = user_logs
        """DEVELOPMENT ONLY (``serve --user-logs``): log what each job's code prints."""
        self.metrics = Metrics()
        self.supervisor = Supervisor(metrics=self.metrics)
        """Every long-lived part of the daemon runs under it (``parts_down()``: the health)."""
        self._metrics_addr = metrics_addr or settings.metrics_addr
        self.metrics_url = ""
        self.listen = listen
        self._cgroup_parent = cgroup_parent
        self._unconfined = unconfined
        self._grace_s = shutdown_grace_s
        self._stack = contextlib.AsyncExitStack()
        self.service: ExecutorService | None = None
        self.sandbox: Sandbox | None = None
        self.admin_url = ""
        self.stop = asyncio.Event()
        self.force_stop = asyncio.Event()

    async def __aenter__(self) -> Daemon:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        s = self.settings
        self._stack.push_async_callback(self.supervisor.close)  # last: after each part's owner
        for url in (*s.http_rpc_urls, *s.web_socket_urls):
            redact.register_url_credentials(url)
        key = EnclaveKey.load(s.enclave_signer_file)
        logger.info("enclave address %s", key.address)

        if not s.workerd_binary.is_file():
            raise ConfigError("workerd_runtime_path", f"no workerd binary at {s.workerd_binary}")
        try:
            s.workerd_runtime_path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                "workerd_runtime_path", f"cannot create {s.workerd_runtime_path}: {e.strerror}"
            ) from e
        if not s.secret_store_path.is_dir():
            raise ConfigError(
                "secret_store_path",
                f"{s.secret_store_path} is not a folder (create it: mkdir -p "
                f"{s.secret_store_path}); jobs with a secret would fail",
            )
        if self._user_logs:
            logger.warning(
                "DEVELOPMENT MODE: what user code prints is logged (--user-logs); "
                "never use it in production"
            )
        if self._unconfined:
            pool = None
            job_capacity = 1
            logger.warning(
                "DEVELOPMENT MODE: user code runs WITHOUT cgroup confinement (--unconfined-dev)"
            )
        else:
            pool = SlicePool.discover(self._cgroup_parent)
            job_capacity = pool.capacity
            logger.info(
                "%d cgroup slices in %s: job capacity %d", pool.capacity, pool.parent, job_capacity
            )
            limits = pool.limits()
            (logger.info if limits.enforced else logger.warning)("%s", limits.describe())
        sandbox = Sandbox(
            workerd_bin=s.workerd_binary,
            runtime_path=s.workerd_runtime_path,
            secret_store_path=s.secret_store_path,
            pool=pool,
            warm_workers=s.warm_workers,
            # the daemon reads a job's logs only to show them in development (--user-logs)
            complete_logs=self._user_logs,
            outbound=OutboundBudget(fetches=s.job_fetch_limit, received=s.job_fetch_bytes_limit),
        )
        self.sandbox = sandbox
        self.metrics.watch_slices(sandbox if pool is not None else None)
        sandbox.start(self.supervisor)  # arms the warm slices in the background
        self._stack.push_async_callback(sandbox.close)  # after the service's jobs are done

        # Reads fail over across every http_rpc_url; one client per endpoint for the code
        # fetcher and for broadcasting raw transactions.
        rpc = RpcEndpoints(s.http_rpc_urls)
        self._stack.push_async_callback(rpc.close)
        store = (
            SecretStoreClient(s.secret_store_config_port) if s.secret_store_config_port else None
        )
        if store is None:
            logger.info("no secret_store_config_port: running without a secret store")

        sandbox_watch = SandboxWatch(sandbox)
        service = ExecutorService(
            settings=s,
            key=key,
            w3=rpc.w3,
            clients=rpc.clients,
            execute=(
                logging_user_output(sandbox_watch.execute)
                if self._user_logs
                else sandbox_watch.execute
            ),
            job_capacity=job_capacity,
            secret_store=store,
            metrics=self.metrics,
            supervisor=self.supervisor,
        )
        self.metrics.watch_node_state(lambda: service.status.value)
        self.service = service
        self._stack.push_async_callback(service.close, self._grace_s, self.force_stop)
        self._watch_health(service, sandbox, sandbox_watch, rpc)

        runner = web.AppRunner(build_admin_app(service), access_log=None, handle_signals=False)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site: web.BaseSite
        if self.listen.kind == "vsock":
            site = VsockSite(runner, self.listen.cid, self.listen.port)
        else:
            site = web.TCPSite(runner, self.listen.host, self.listen.port)
            logger.warning(
                "admin API on TCP %s is UNAUTHENTICATED: for development only", self.listen
            )
        try:
            await site.start()
        except OSError as e:
            raise ExecutorError(
                f"cannot serve the admin API on {self.listen}: {e.strerror or e}"
                + _bind_hint(self.listen, e)
            ) from e
        self.admin_url = _site_url(runner, self.listen)
        logger.info("admin API listening on %s", self.admin_url)
        if self._metrics_addr:
            await self._serve_metrics(self._metrics_addr)

    def _watch_health(
        self, service: ExecutorService, sandbox: Sandbox, watch: SandboxWatch, rpc: RpcEndpoints
    ) -> None:
        health = NodeHealth(
            version=__version__,
            stream=service.stream_health,
            sandbox=watch,
            warm=lambda: sandbox.warm,
            w3=rpc.w3,
            gas_address=lambda: service.gas_account.address if service.gas_account else None,
            parts_down=lambda: {**self.supervisor.parts_down(), **self._parts_down()},
            chain_grace_s=self._chain_grace_s,
        )
        self.health = health
        service.node_health = health
        self.metrics.watch_health(
            version=__version__,
            healthy=lambda: not health.reasons(),
            gas_balance_wei=lambda: health.gas.balance_wei,
            jobs_in_flight=lambda: len(service.executions),
        )
        task = self.supervisor.run(
            "health", lambda: health.watch(canary_at_start=self._startup_canary)
        )

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        self._stack.push_async_callback(stop)  # before the sandbox closes

    async def _serve_metrics(self, addr: str) -> None:
        try:
            where = parse_tcp_addr(addr)
        except ConfigError as e:
            raise ConfigError("--metrics-addr", e.reason) from e
        runner = web.AppRunner(metrics_app(self.metrics), access_log=None, handle_signals=False)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        try:
            await web.TCPSite(runner, where.host, where.port).start()
        except OSError as e:
            raise ExecutorError(f"cannot serve metrics on {addr}: {e.strerror or e}") from e
        self.metrics_url = _site_url(runner, where) + "metrics"
        logger.info("Prometheus metrics on %s", self.metrics_url)

    async def serve_until_signalled(self) -> None:
        """Start, serve until SIGTERM/SIGINT, stop. A second signal cancels running jobs at once."""
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                logger.info(
                    "%s: stopping; running jobs get up to %.0fs (signal again to force)",
                    signal.Signals(signum).name,
                    self._grace_s,
                )
                self.stop.set()
            else:
                logger.warning("second signal: cancelling running jobs now")
                self.force_stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            async with self:
                await self.stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def _bind_hint(listen: ListenAddress, e: OSError) -> str:
    """What is missing when the admin socket cannot bind (the error alone does not say)."""
    if listen.kind != "vsock":
        if e.errno == errno.EADDRINUSE:
            return " (another process listens there: pick another --tcp-addr port)"
        return ""
    if e.errno == errno.EADDRNOTAVAIL:
        return (
            f" (no vsock device has CID {listen.host} here: inside a Nitro enclave use the CID "
            "the enclave was started with or -1 for any; on a host without vsock use --tcp-addr "
            "for development)"
        )
    if e.errno in (errno.EAFNOSUPPORT, errno.ENODEV, errno.ENOENT):
        return (
            " (this kernel has no vsock support: run in a Nitro enclave, or load the "
            "vsock_loopback / vhost_vsock module, or use --tcp-addr for development)"
        )
    if e.errno == errno.EADDRINUSE:
        return f" (port {listen.port} is taken: stop the other executor or pick another port)"
    return ""


def _site_url(runner: web.AppRunner, listen: ListenAddress) -> str:
    if listen.kind == "vsock":
        return f"vsock://{listen.host}:{listen.port}/"
    for sock in runner.addresses:
        host, port = sock[:2]
        return f"http://{host}:{port}/"
    return f"http://{listen.host}:{listen.port}/"


USER_LOG_LINES = 50
USER_LOG_LINE_BYTES = 500
user_code_logger = logging.getLogger("executor.user_code")


def logging_user_output(execute: Any) -> Any:
    """``execute`` that also logs what the job's code printed (console.log, console.error), one
    record per line, bounded, under the job's label: for development (``serve --user-logs``)."""

    async def execute_and_log(code: bytes, inputs: bytes, **kwargs: Any) -> JobOutcome:
        outcome: JobOutcome = await execute(code, inputs, **kwargs)
        # workerd's native stack addresses say nothing to a dApp author
        lines = [ln for ln in outcome.logs.splitlines() if not ln.startswith("stack: /")]
        for line in lines[:USER_LOG_LINES]:
            user_code_logger.info("console: %s", line[:USER_LOG_LINE_BYTES])
        if len(lines) > USER_LOG_LINES:
            user_code_logger.info("console: ... %d more line(s)", len(lines) - USER_LOG_LINES)
        return outcome

    return execute_and_log
