"""workerd configs as binary Cap'n Proto messages (``workerd serve --binary``), passed in memory.

At every start workerd compiles its text config, and the whole ``workerd.capnp`` schema the config
imports: about a tenth of a start-up's CPU here (``benchmarks/``). The same config encoded in Python
(pycapnp, with the ``workerd.capnp`` that the workerd npm package ships for the binary's own
version) spares workerd that work. The message goes to workerd in a memfd (``/proc/self/fd/N``), so
a cold job's code and secret are never written to a file.

The binary configs mean exactly what the text configs of :func:`.workerd.render_config` and
:func:`.loader.render_loader_config` mean (the tests run both). One difference in form: the text
config ``embed``s the code file, whose raw bytes workerd reads, while a binary config carries the
code in a Text field, which must be UTF-8. Code that is not valid UTF-8, or holds a NUL byte, is
therefore started from the text config. The user's bytes are a field's value either way, never
config syntax.

Without pycapnp or the schema (``$OYSTER_WORKERD_SCHEMA``, then next to the binary: the npm layout
``node_modules/workerd/workerd.capnp`` or ``<prefix>/share/workerd/workerd.capnp``), every config
stays text, and the log says so once. The same holds when workerd, started once from a binary
config when the schema is loaded (a blocking ~50 ms, once per process), does not come up: a schema
of another version must not fail every job later.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from executor.sandbox.loader import LOADER_ID
from executor.sandbox.outbound import SERVICE as OUTBOUND_SERVICE
from executor.sandbox.outbound import OutboundBudget
from executor.sandbox.workerd import COMPATIBILITY_DATE, V8_FLAGS, binary_config_fd

log = logging.getLogger(__name__)

SCHEMA_ENV = "OYSTER_WORKERD_SCHEMA"


def find_schema(workerd_bin: Path) -> Path | None:
    """The ``workerd.capnp`` of this workerd binary, if it can be found."""
    override = os.environ.get(SCHEMA_ENV)
    if override:
        return Path(override) if Path(override).is_file() else None
    real = workerd_bin.resolve()
    up = real.parents
    candidates = [real.parent / "workerd.capnp"]
    if len(up) > 1:  # <prefix>/bin/workerd
        candidates.append(up[1] / "share" / "workerd" / "workerd.capnp")
    if len(up) > 3:  # node_modules/@cloudflare/workerd-<platform>/bin/workerd
        candidates.append(up[3] / "workerd" / "workerd.capnp")
    return next((path for path in candidates if path.is_file()), None)


_loaded: dict[bytes, Any] = {}
"""Schemas loaded in this process, by the SHA-256 of their text."""


def _load_schema(path: Path) -> Any:
    """The schema module of ``path``; the same module for every file with the same text.

    The Cap'n Proto compiler aborts the whole process (not an exception) when a second file
    declares a file id it has seen: a different ``workerd.capnp`` (another workerd version) after
    one was loaded is refused with ``ValueError`` instead.
    """
    import capnp

    digest = hashlib.sha256(path.read_bytes()).digest()
    if digest in _loaded:
        return _loaded[digest]
    if _loaded:
        raise ValueError("another workerd.capnp is already loaded in this process")
    imports = [str(Path(capnp.__file__).parent.parent)]  # its bundled /capnp/c++.capnp
    _loaded[digest] = capnp.load(str(path), imports=imports)
    return _loaded[digest]


def _memfds_usable() -> bool:
    """Whether a config can be handed over as ``/proc/self/fd/N`` of a memfd here."""
    try:
        os.close(os.memfd_create("probe", os.MFD_CLOEXEC))
    except (AttributeError, OSError):
        return False
    return Path("/proc/self/fd").is_dir()


class BinaryConfigs:
    """Encodes the two configs the sandbox starts workerd with (see the module docstring)."""

    def __init__(self, schema: Any) -> None:
        self._schema = schema

    @classmethod
    def load(cls, workerd_bin: Path) -> BinaryConfigs | None:
        """The encoder for this binary's schema; ``None`` (said in the log) where there is none."""
        try:
            import capnp  # noqa: F401
        except ImportError:
            log.info("pycapnp is not installed: workerd starts from text configs")
            return None
        if not _memfds_usable():
            log.info("no memfd or no /proc here: workerd starts from text configs")
            return None
        path = find_schema(workerd_bin)
        if path is None:
            log.info(
                "no workerd.capnp found for %s (set $%s): workerd starts from text configs",
                workerd_bin,
                SCHEMA_ENV,
            )
            return None
        try:
            configs = cls(_load_schema(path))
        except Exception as e:  # a schema pycapnp cannot read: the text configs still work
            log.warning("cannot load %s (%s): workerd starts from text configs", path, e)
            return None
        failure = _self_test_once(workerd_bin, path, configs)
        if failure is not None:
            log.warning(
                "workerd %s did not start from a binary config encoded with %s (%s): "
                "workerd starts from text configs",
                workerd_bin,
                path,
                failure,
            )
            return None
        return configs

    def job(
        self,
        code: bytes,
        *,
        port: int,
        secret: bytes | None,
        outbound: OutboundBudget | None = None,
    ) -> bytes | None:
        """A cold job's config (its code inline, ``env.secret`` = ``secret``); ``None`` for code
        a Text field cannot carry verbatim (the caller then uses the text config)."""
        if b"\x00" in code:
            return None
        try:
            text = code.decode("utf-8")
        except UnicodeDecodeError:
            return None
        bindings: list[tuple[str, bytes | None]] = [] if secret is None else [("secret", secret)]
        return self._config(
            module=("main", text), flags=[], bindings=bindings, port=port, outbound=outbound
        )

    def loader(self, loader_js: str, *, port: int, outbound: OutboundBudget | None = None) -> bytes:
        """A warm slice's config: the loader worker and its Worker Loader binding."""
        return self._config(
            module=("loader", loader_js),
            flags=["experimental"],
            bindings=[("LOADER", None)],
            port=port,
            outbound=outbound,
            loader=True,
        )

    def _config(
        self,
        *,
        module: tuple[str, str],
        flags: list[str],
        bindings: list[tuple[str, bytes | None]],
        port: int,
        outbound: OutboundBudget | None = None,
        loader: bool = False,
    ) -> bytes:
        budget = outbound is not None and outbound.active
        config = self._schema.Config.new_message()
        services = config.init("services", 2 if budget else 1)
        service = services[0]
        service.name = "main"
        worker = service.init("worker")
        main = worker.init("modules", 1)[0]
        main.name, main.esModule = module
        worker.compatibilityDate = COMPATIBILITY_DATE
        if flags:
            worker.compatibilityFlags = flags
        if budget and loader:
            bindings = [*bindings, ("BUDGET", b"")]
        if bindings:
            slots = worker.init("bindings", len(bindings))
            for slot, (name, data) in zip(slots, bindings, strict=True):
                slot.name = name
                if name == "BUDGET" and loader:
                    slot.init("service").name = OUTBOUND_SERVICE
                elif data is None:
                    slot.init("workerLoader").id = LOADER_ID
                else:
                    slot.data = data
        if budget:
            assert outbound is not None
            if not loader:
                worker.init("globalOutbound").name = OUTBOUND_SERVICE
            counting = services[1]
            counting.name = OUTBOUND_SERVICE
            counter = counting.init("worker")
            counter_module = counter.init("modules", 1)[0]
            counter_module.name, counter_module.esModule = "outbound", outbound.worker_js()
            counter.compatibilityDate = COMPATIBILITY_DATE
        socket = config.init("sockets", 1)[0]
        socket.name = "http"
        socket.address = f"127.0.0.1:{port}"
        socket.init("http")
        socket.service.name = "main"
        config.v8Flags = list(V8_FLAGS)
        return bytes(config.to_bytes())


SELF_TEST_TIMEOUT_S = 10.0
_self_tests: dict[tuple[Path, Path], str | None] = {}


def _self_test_once(workerd_bin: Path, schema: Path, configs: BinaryConfigs) -> str | None:
    """Start workerd once from a binary config (a worker that is never asked anything) and wait
    for its listen report: a schema of another workerd version, or a workerd that cannot read the
    memfd, shows here, once per process, not in a job. ``None`` if it started, else why not."""
    key = (workerd_bin.resolve(), schema)
    if key not in _self_tests:
        _self_tests[key] = _self_test(workerd_bin, configs)
    return _self_tests[key]


def _self_test(workerd_bin: Path, configs: BinaryConfigs) -> str | None:
    message = configs.job(
        b"export default { fetch() { return new Response(); } };", port=0, secret=None
    )
    assert message is not None
    config_fd, config_args = binary_config_fd(message)
    read_fd, write_fd = os.pipe()
    try:
        argv = [str(workerd_bin), "serve", *config_args, "--control-fd", str(write_fd)]
        try:
            proc = subprocess.Popen(
                argv,
                pass_fds=(config_fd, write_fd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin"},
            )
        except OSError as e:
            return f"cannot run it: {e}"
        os.close(write_fd)
        write_fd = -1
        try:
            report = _read_line(read_fd, SELF_TEST_TIMEOUT_S)
        finally:
            proc.kill()
            _, err = proc.communicate()
        if b'"listen"' in report:
            return None
        tail = err.decode("utf-8", errors="replace").strip().splitlines()[-1:] or ["no output"]
        return f"exited with status {proc.returncode}: {tail[0][:300]}"
    finally:
        for fd in (config_fd, read_fd, write_fd):
            if fd >= 0:
                os.close(fd)


def _read_line(fd: int, timeout_s: float) -> bytes:
    """The first line written to ``fd`` (or what came before EOF or the timeout)."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data
