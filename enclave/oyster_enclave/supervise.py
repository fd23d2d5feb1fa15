"""PID 1's second half in the enclave image: start every process, restart any that dies.

``enclave/entrypoint.sh`` prepares the enclave (cgroup v2, loopback, the default route and the
iptables DNAT, ``/etc/resolv.conf``, the enclave key) and then execs this. The processes
(:func:`plan`), each restarted when it exits (after 1 s, doubling up to 30 s while it keeps dying
young), with stdout and stderr going to the image's stdout (the enclave console):

- ``outbound``: the transparent proxy, 127.0.0.1:1200 -> vsock 3:1200
- ``dns``: DNS on 127.0.0.1:53 over DNS-over-HTTPS
- ``attestation``: 127.0.0.1:1300, and ``attestation-vsock``: vsock 88:1300 -> it
- ``executor``: ``oyster-executor serve`` with the admin API on vsock (``OYSTER_VSOCK_ADDR``)
- ``metrics-vsock``: vsock :PORT -> the metrics listener, when ``OYSTER_METRICS_ADDR`` is set

``--check`` only checks the devices an enclave has (``/dev/nsm``, ``/dev/vsock``) and fails naming
the missing one. Test settings: ``OYSTER_VSOCK_STANDIN=unix:DIR`` (vsock endpoints become unix
sockets in DIR, so /dev/vsock is not needed; the admin API is then served on loopback TCP and
exposed at the stand-in of its vsock address) and ``OYSTER_NSM_OPTIONAL=1`` (no /dev/nsm:
the attestation endpoint answers 503).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from oyster_enclave.endpoints import STANDIN_ENV

RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
STOP_GRACE_S = 40.0  # above the executor's own shutdown grace (30 s by default)


def say(message: str) -> None:
    print(f"supervise: {message}", flush=True)


@dataclass
class Program:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = RESTART_MIN_S
    restart_at: float | None = field(default=0.0)


def missing_devices(env: Mapping[str, str]) -> list[str]:
    """What this enclave lacks, each with the reason it is needed."""
    missing = []
    if not env.get("OYSTER_NSM_OPTIONAL") and not os.path.exists("/dev/nsm"):
        missing.append("/dev/nsm (the Nitro Secure Module: attestation)")
    if not env.get(STANDIN_ENV) and not os.path.exists("/dev/vsock"):
        missing.append("/dev/vsock (every link to the parent instance)")
    return missing


def plan(env: Mapping[str, str], extra: list[str] | None = None) -> list[Program]:
    """The processes of the enclave, from the entrypoint's settings (``extra``: more arguments
    for ``oyster-executor serve``)."""
    py = [sys.executable, "-m"]
    app = env.get("OYSTER_APP", "/app")
    key = env.get("OYSTER_EXECUTOR_ENCLAVE_SIGNER_FILE", f"{app}/id.sec")
    vsock = env.get("OYSTER_VSOCK_ADDR", "88:6000")
    config = env.get("OYSTER_CONFIG_FILE", f"{app}/oyster_serverless_executor_config.json")
    upstream = env.get("OYSTER_OUTBOUND_VSOCK", "3:1200")
    doh = env.get("OYSTER_DOH_URL", "https://1.1.1.1/dns-query")
    programs = [
        Program(
            "outbound",
            [
                *py,
                "oyster_enclave.proxy",
                "outbound",
                "--listen",
                "tcp:127.0.0.1:1200",
                "--upstream",
                f"vsock:{upstream}",
            ],
        ),
        Program("dns", [*py, "oyster_enclave.dns", "--listen", "127.0.0.1:53", "--upstream", doh]),
        Program(
            "attestation",
            [
                *py,
                "oyster_enclave.attestation",
                "--ip-addr",
                "127.0.0.1:1300",
                "--pub-key",
                f"{key}.pub",
            ],
        ),
        Program(
            "attestation-vsock",
            [
                *py,
                "oyster_enclave.proxy",
                "forward",
                "--listen",
                "vsock:88:1300",
                "--target",
                "tcp:127.0.0.1:1300",
            ],
        ),
    ]
    cgroup = env.get("OYSTER_CGROUP_ROOT", "/sys/fs/cgroup")
    if env.get("OYSTER_CGROUP_PARENT"):
        cgroup = f"{cgroup}/{env['OYSTER_CGROUP_PARENT']}"
    serve = [
        "oyster-executor",
        "--log-format",
        env.get("OYSTER_LOG_FORMAT", "json"),
        "serve",
        "--config-file",
        config,
        "--cgroup-parent",
        cgroup,
    ]
    metrics = env.get("OYSTER_METRICS_ADDR", "")
    if metrics:
        serve += ["--metrics-addr", metrics]
        programs.append(
            Program(
                "metrics-vsock",
                [
                    *py,
                    "oyster_enclave.proxy",
                    "forward",
                    "--listen",
                    f"vsock:88:{metrics.rpartition(':')[2]}",
                    "--target",
                    f"tcp:{metrics}",
                ],
            )
        )
    if env.get(STANDIN_ENV):
        # No vsock across the boundary: the admin API on loopback, exposed at the stand-in.
        admin_port = vsock.rpartition(":")[2]
        serve += ["--tcp-addr", f"127.0.0.1:{admin_port}"]
        programs.append(
            Program(
                "admin-vsock",
                [
                    *py,
                    "oyster_enclave.proxy",
                    "forward",
                    "--listen",
                    f"vsock:{vsock}",
                    "--target",
                    f"tcp:127.0.0.1:{admin_port}",
                ],
            )
        )
    else:
        serve += ["--vsock-addr", vsock]
    programs.append(Program("executor", serve + list(extra or [])))
    return programs


class Supervisor:
    def __init__(self, programs: list[Program]) -> None:
        self.programs = programs
        self.stopping = False

    def start(self, program: Program) -> None:
        try:
            program.process = subprocess.Popen(program.argv, stderr=subprocess.STDOUT)
        except OSError as e:
            say(f"{program.name}: cannot start {program.argv[0]}: {e.strerror or e}")
            program.process = None
            self._schedule(program, time.monotonic())
            return
        program.started = time.monotonic()
        program.restart_at = None
        say(f"{program.name} started (pid {program.process.pid})")

    def _schedule(self, program: Program, now: float) -> None:
        if now - program.started >= HEALTHY_AFTER_S:
            program.delay = RESTART_MIN_S
        program.restart_at = now + program.delay
        say(f"{program.name}: restarting in {program.delay:.0f} s")
        program.delay = min(program.delay * 2, RESTART_MAX_S)

    def step(self, now: float) -> None:
        """Reap exited programs, start those whose restart time has come."""
        for program in self.programs:
            if program.process is not None and program.process.poll() is not None:
                say(f"{program.name} exited with status {program.process.returncode}")
                program.process = None
                self._schedule(program, now)
            if (
                program.process is None
                and program.restart_at is not None
                and now >= program.restart_at
            ):
                self.start(program)

    def stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        while not self.stopping:
            self.step(time.monotonic())
            time.sleep(0.2)
        return self.shutdown()

    def shutdown(self) -> int:
        say("stopping every process")
        running = [p for p in self.programs if p.process is not None]
        for program in running:
            assert program.process is not None
            program.process.terminate()
        give_up = time.monotonic() + STOP_GRACE_S
        for program in running:
            assert program.process is not None
            try:
                program.process.wait(max(0.0, give_up - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{program.name} did not stop; killing it")
                program.process.kill()
                program.process.wait()
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="oyster_enclave.supervise", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="only check the enclave's devices")
    parser.add_argument("--print-plan", action="store_true", help="print each command, start none")
    parser.add_argument("serve_args", nargs="*", help="more arguments for oyster-executor serve")
    args = parser.parse_args(argv)
    if args.print_plan:
        for program in plan(os.environ, args.serve_args):
            print(shlex.join(program.argv))
        return 0
    missing = missing_devices(os.environ)
    if missing:
        for device in missing:
            say(f"missing {device}")
        say(
            "this image runs inside an AWS Nitro enclave (nitro-cli run-enclave); "
            "see docs/operator.md"
        )
        return 1
    if args.check:
        return 0
    return Supervisor(plan(os.environ, args.serve_args)).run()


if __name__ == "__main__":
    sys.exit(main())
