"""The packages' layers (docs/architecture.md): imports go down, never back up.

Read from the sources with ``ast`` (every import, at module level or inside a function), so a
new module is held to the rules as soon as it exists.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "executor"

LEAVES = {
    "executor",
    "executor.errors",
    "executor.outcome",
    "executor.redact",
    "executor.logs",
    "executor.metrics",
    "executor.tasks",
    "executor.config",
}
"""Shared by every layer; they import only each other."""
CHAIN_SUBPACKAGES = ("transactions", "follow", "code")
ABOVE_CHAIN_AND_SANDBOX = (
    "executor.jobs",
    "executor.node",
    "executor.service",
    "executor.admin",
    "executor.daemon",
    "executor.doctor",
    "executor.commands",
    "executor.cli",
    "executor.__main__",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Iterator[str]:
    """Every executor module ``path`` imports (``from executor import redact`` names
    ``executor.redact``; relative imports are resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            for alias in node.names:
                yield f"{module}.{alias.name}"  # a submodule, if it is one (filtered below)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        targets = set()
        for target in imports_of(path):
            # keep only real executor modules: `executor.chain.rpc.call` -> `executor.chain.rpc`
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


EDGES = graph()


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def violations(source_packages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{source} imports {target}"
        for source, targets in EDGES.items()
        if within(source, *source_packages)
        for target in targets
        if within(target, *forbidden)
    )


def test_the_graph_is_read() -> None:
    assert "executor.chain.transactions.manager" in EDGES["executor.service"] | set().union(
        *EDGES.values()
    )
    assert "executor.errors" in EDGES["executor.chain.rpc"]


def test_leaves_import_only_leaves() -> None:
    bad = sorted(
        f"{source} imports {target}"
        for source in LEAVES
        for target in EDGES.get(source, set())
        if target not in LEAVES
    )
    assert not bad, bad


@pytest.mark.parametrize("lower", ["executor.chain", "executor.sandbox"])
def test_chain_and_sandbox_import_nothing_above_them(lower: str) -> None:
    other = "executor.sandbox" if lower == "executor.chain" else "executor.chain"
    bad = violations((lower,), (*ABOVE_CHAIN_AND_SANDBOX, other))
    assert not bad, bad


@pytest.mark.parametrize("part", CHAIN_SUBPACKAGES)
def test_the_chain_subpackages_are_independent(part: str) -> None:
    """Each uses the chain's shared modules (``rpc``, ``enclave_key``, ``jobs_contract``),
    never another sub-package."""
    others = tuple(f"executor.chain.{p}" for p in CHAIN_SUBPACKAGES if p != part)
    bad = violations((f"executor.chain.{part}",), others)
    assert not bad, bad


def test_the_chain_s_shared_modules_import_no_subpackage() -> None:
    shared = tuple(
        m
        for m in MODULES
        if m.startswith("executor.chain")
        and not within(m, *(f"executor.chain.{p}" for p in CHAIN_SUBPACKAGES))
        and m != "executor.chain"
    )
    bad = violations(shared, tuple(f"executor.chain.{p}" for p in CHAIN_SUBPACKAGES))
    assert not bad, bad


def test_jobs_and_node_import_no_service_admin_or_commands() -> None:
    bad = violations(
        ("executor.jobs", "executor.node"),
        (
            "executor.service",
            "executor.admin",
            "executor.daemon",
            "executor.commands",
            "executor.cli",
        ),
    )
    assert not bad, bad


def test_outside_chain_the_subpackages_are_used_through_their_public_surface() -> None:
    """Product code outside ``executor.chain`` imports ``executor.chain.transactions`` (its
    ``__init__``), not ``executor.chain.transactions.inflight``."""
    bad = sorted(
        f"{source} imports {target}"
        for source, targets in EDGES.items()
        if not within(source, "executor.chain")
        for target in targets
        for part in CHAIN_SUBPACKAGES
        if target.startswith(f"executor.chain.{part}.")
    )
    assert not bad, bad
