"""The daemon: owns the event loop's lifetime, starts the parts in order, stops them in reverse.

Order: settings -> enclave key -> cgroup slices + sandbox -> chain clients -> service -> admin site
-> metrics site (opt-in, its own TCP address: never the admin socket).
The first SIGTERM/SIGINT stops taking jobs and lets running ones finish within a bound; a second
one forces the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from types import TracebackType

from aiohttp import web

from executor import redact
from executor.admin.app import build_admin_app
from executor.admin.secret_store import SecretStoreClient
from executor.admin.sites import ListenAddress, VsockSite, parse_tcp_addr
from executor.chain.enclave_key import EnclaveKey
from executor.chain.rpc import RpcEndpoints
from executor.config import DEFAULT_SHUTDOWN_GRACE_S, Settings
from executor.errors import ConfigError, ExecutorError
from executor.metrics import Metrics, metrics_app
from executor.sandbox.cgroups import SlicePool
from executor.sandbox.runner import Sandbox
from executor.service import ExecutorService

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
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
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
        for url in (*s.http_rpc_urls, *s.web_socket_urls):
            redact.register_url_credentials(url)
        key = EnclaveKey.load(s.enclave_signer_file)
        logger.info("enclave address %s", key.address)

        if not s.workerd_binary.is_file():
            raise ConfigError("workerd_runtime_path", f"no workerd binary at {s.workerd_binary}")
        s.workerd_runtime_path.mkdir(parents=True, exist_ok=True)
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
            complete_logs=False,  # the daemon never reads a job's logs
        )
        self.sandbox = sandbox
        self.metrics.watch_slices(sandbox if pool is not None else None)
        sandbox.start()  # arms the warm slices in the background
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

        service = ExecutorService(
            settings=s,
            key=key,
            w3=rpc.w3,
            clients=rpc.clients,
            execute=sandbox.execute,
            job_capacity=job_capacity,
            secret_store=store,
            metrics=self.metrics,
        )
        self.metrics.watch_node_state(lambda: service.status.value)
        self.service = service
        self._stack.push_async_callback(service.close, self._grace_s, self.force_stop)

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
            ) from e
        self.admin_url = _site_url(runner, self.listen)
        logger.info("admin API listening on %s", self.admin_url)
        if self._metrics_addr:
            await self._serve_metrics(self._metrics_addr)

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


def _site_url(runner: web.AppRunner, listen: ListenAddress) -> str:
    if listen.kind == "vsock":
        return f"vsock://{listen.host}:{listen.port}/"
    for sock in runner.addresses:
        host, port = sock[:2]
        return f"http://{host}:{port}/"
    return f"http://{listen.host}:{listen.port}/"
