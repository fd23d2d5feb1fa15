"""What can be checked of the enclave image without a Docker engine (there is none here).

Every file the Dockerfile copies from the build context exists, the entrypoint is valid ``sh`` and
the command it ends with parses with the real CLI, the pinned dependencies are the product's own,
and the loopback helper is importable. Building the image is documented in docs/operator.md.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from executor.cli import build_parser
from executor.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.nitro"
ENTRYPOINT = ROOT / "enclave" / "entrypoint.sh"


def copied_sources() -> list[str]:
    """The build-context sources of every COPY (those of ``COPY --from=stage`` are not files)."""
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from=") for w in words):
            continue
        sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_every_file_the_dockerfile_copies_exists() -> None:
    sources = copied_sources()
    assert {"requirements.lock", "executor", "cgroup_setup.sh", "enclave/entrypoint.sh"} <= set(
        sources
    )
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"Dockerfile.nitro copies files that do not exist: {missing}"
    text = DOCKERFILE.read_text()
    assert "oyster_devnet" not in text and "devnet" not in re.sub(r"#.*", "", text)
    assert 'ENTRYPOINT ["/app/enclave/entrypoint.sh"]' in text
    assert "npm ci --omit=dev" in text


def test_entrypoint_is_valid_sh() -> None:
    checked = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert os.access(ENTRYPOINT, os.X_OK)


def dry_run(*args: str, **env: str) -> list[str]:
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "OYSTER_ENTRYPOINT_DRY_RUN": "1", **env},
        check=True,
    )
    return result.stdout.splitlines()


def test_entrypoint_sets_up_the_enclave_then_starts_the_daemon_on_vsock() -> None:
    steps = dry_run()
    assert "mount -t cgroup2 none /sys/fs/cgroup" in steps
    assert "/app/cgroup_setup.sh" in steps
    assert any(s in steps for s in ("ip link set lo up", "python3 /app/enclave/loopback_up.py"))
    assert steps.index("/app/cgroup_setup.sh") < len(steps) - 1
    argv = shlex.split(steps[-1])
    assert argv[0] == "oyster-executor"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"
    assert args.vsock_addr == "88:6000"
    assert args.config_file == Path("/app/oyster_serverless_executor_config.json")
    assert args.log_format == "json"
    assert args.metrics_addr is None


def test_entrypoint_settings_and_extra_arguments_reach_the_daemon() -> None:
    steps = dry_run(
        "--shutdown-grace",
        "20",
        OYSTER_VSOCK_ADDR="16:7000",
        OYSTER_METRICS_ADDR="127.0.0.1:9102",
        OYSTER_LOG_FORMAT="text",
    )
    args = build_parser().parse_args(shlex.split(steps[-1])[1:])
    assert (args.vsock_addr, args.metrics_addr, args.log_format) == (
        "16:7000",
        "127.0.0.1:9102",
        "text",
    )
    assert args.shutdown_grace == 20.0


def test_the_keygen_step_parses_with_the_cli() -> None:
    [keygen] = [s for s in dry_run() if " keygen " in s]
    args = build_parser().parse_args(shlex.split(keygen)[1:])
    assert args.command == "keygen" and args.secret == Path("/app/id.sec")


def test_the_image_config_needs_only_the_contract_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = ROOT / "enclave" / "oyster_serverless_executor_config.json"
    data = json.loads(config.read_text())
    assert data["workerd_runtime_path"] == "/app/runtime/"
    for n, key in enumerate(("tee_manager", "jobs", "code"), start=1):
        monkeypatch.setenv(f"OYSTER_EXECUTOR_{key.upper()}_CONTRACT_ADDR", f"0x{n:040x}")
    settings = Settings.load(config)
    assert settings.enclave_signer_file == Path("/app/id.sec")


def test_locked_dependencies_are_the_products_runtime_ones() -> None:
    pinned = {
        re.split(r"[=<>]", line)[0].lower().replace("_", "-")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[=<>\[ ]", d)[0].lower() for d in project["dependencies"]}
    dev = {re.split(r"[=<>\[ ]", d)[0].lower() for d in project["optional-dependencies"]["dev"]}
    assert runtime <= pinned, runtime - pinned
    assert not dev & pinned, dev & pinned
    assert not {"oyster-devnet", "oyster-executor"} & pinned


def test_loopback_helper_is_importable() -> None:
    sys.path.insert(0, str(ROOT / "enclave"))
    try:
        import loopback_up  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "enclave"))
    assert loopback_up.SIOCSIFFLAGS == 0x8914
    if os.geteuid() == 0:
        assert loopback_up.loopback_up() is False  # lo is already up on this machine
