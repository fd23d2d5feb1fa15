"""Command-line options that several commands share, defined once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from eth_utils import is_hex_address, to_checksum_address

from executor import redact
from executor.config import DEFAULT_CONFIG_FILE, Settings
from executor.errors import UsageError


def add_node_options(parser: argparse.ArgumentParser) -> None:
    """``--config-file`` and ``--cgroup-parent``: where a node's config and slices are."""
    parser.add_argument(
        "--config-file",
        type=Path,
        default=DEFAULT_CONFIG_FILE,
        help=f"operator JSON config (default: {DEFAULT_CONFIG_FILE})",
    )
    parser.add_argument(
        "--cgroup-parent",
        type=Path,
        default=None,
        help="folder holding the workerd_N cgroup slices (default: the cgroup v2 mount root)",
    )


@dataclass(frozen=True)
class ChainTarget:
    """Where a job lives: the RPC endpoints and the contracts (from flags or the config file)."""

    rpc_urls: tuple[str, ...]
    jobs: str
    code_contract: str
    tee_manager: str | None


_TARGET_FLAGS = (
    ("rpc", "--rpc", "URL", "http_rpc_url", "HTTP JSON-RPC endpoint of the chain"),
    ("jobs", "--jobs", "ADDR", "jobs_contract_addr", "Jobs contract address"),
    ("code_contract", "--code-contract", "ADDR", "code_contract_addr", "UserCode contract address"),
    ("tee_manager", "--tee-manager", "ADDR", "tee_manager_contract_addr", "TeeManager address"),
)


def add_chain_options(parser: argparse.ArgumentParser, *, tee_manager: bool) -> None:
    """``--rpc --jobs --code-contract [--tee-manager]``, each defaulting to the config file's key,
    so that a dApp author needs no config file and an operator needs no flags; ``--from-block``."""
    group = parser.add_argument_group(
        "chain", "each flag defaults to the operator config file's key (--config-file)"
    )
    for dest, flag, metavar, key, what in _TARGET_FLAGS:
        if dest == "tee_manager" and not tee_manager:
            continue
        group.add_argument(flag, dest=dest, metavar=metavar, help=f"{what} (config: {key})")
    group.add_argument(
        "--config-file",
        type=Path,
        default=None,
        help=f"operator JSON config to read the missing ones from (default: {DEFAULT_CONFIG_FILE} "
        "when it exists)",
    )
    group.add_argument(
        "--from-block",
        type=int,
        default=0,
        metavar="N",
        help="search the job's logs from this block (default 0; RPCs that limit eth_getLogs "
        "ranges need one near the job)",
    )


def chain_target(args: argparse.Namespace, *, tee_manager: bool) -> ChainTarget:
    """The target the flags name, the config file filling in what they leave out."""
    wanted = [t for t in _TARGET_FLAGS if tee_manager or t[0] != "tee_manager"]
    given = {dest: getattr(args, dest, None) for dest, *_ in wanted}
    missing = [t for t in wanted if not given[t[0]]]
    if missing:
        path = args.config_file
        if path is None and DEFAULT_CONFIG_FILE.is_file():
            path = DEFAULT_CONFIG_FILE
        if path is None:
            flags = ", ".join(flag for _, flag, *_ in missing)
            raise UsageError(
                f"missing {flags}: pass them, or --config-file with an operator config"
            )
        settings = Settings.load(path)
        for dest, _, _, key, _ in missing:
            value = getattr(settings, key)
            given[dest] = ",".join(value) if isinstance(value, tuple) else str(value)
    for dest in ("jobs", "code_contract", "tee_manager"):
        value = given.get(dest)
        if value is not None and not is_hex_address(value):
            raise UsageError(f"--{dest.replace('_', '-')} {value!r} is not a 20-byte hex address")
    urls = tuple(u.strip() for u in str(given["rpc"]).split(",") if u.strip())
    for url in urls:
        if urlsplit(url).scheme not in ("http", "https"):
            raise UsageError(f"--rpc {redact.url(url)!r} is not an http(s) URL")
    return ChainTarget(
        rpc_urls=urls,
        jobs=to_checksum_address(str(given["jobs"])),
        code_contract=to_checksum_address(str(given["code_contract"])),
        tee_manager=to_checksum_address(given["tee_manager"]) if given.get("tee_manager") else None,
    )


def job_id_arg(text: str) -> int:
    """A job id: a non-negative integer (decimal or 0x hex)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r}") from None
    if not 0 <= value < 2**256:
        raise argparse.ArgumentTypeError(f"not a uint256 job id: {text!r}")
    return value
