"""The documentation stays inside the repository and consistent with the code that cites it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from executor.cli import build_parser
from executor.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [
    p
    for folder in ("executor", "devnet", "tests", "benchmarks", "contracts", "enclave")
    for p in sorted((ROOT / folder).rglob("*"))
    if p.suffix in {".py", ".sol", ".sh", ".md"} and p.name != "test_docs.py"
]
PROSE = [*DOCS, ROOT / "SECURITY.md", ROOT / "BENCHMARKS.md"]


@pytest.mark.parametrize("path", [*DOCS, *SOURCES], ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_refers_outside_the_repository(path: Path) -> None:
    text = path.read_text()
    assert "../shared" not in text
    assert "PROTOCOL.md" not in text
    assert not re.search(r"PROTOCOL (§|section )\d", text), "cite docs/protocol.md §N instead"


@pytest.mark.parametrize("doc", PROSE, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_cited_protocol_sections_exist() -> None:
    protocol = (ROOT / "docs" / "protocol.md").read_text()
    sections = set(re.findall(r"^## §(\d+) ", protocol, re.MULTILINE))
    assert sections == {str(n) for n in range(1, 7)}
    cited = {
        (path.name, number)
        for path in SOURCES
        for number in re.findall(r"docs/protocol\.md §(\d+)", path.read_text())
    }
    assert cited, "the code cites docs/protocol.md"
    assert all(number in sections for _, number in cited), cited


def test_operator_guide_lists_every_config_key_and_serve_option() -> None:
    guide = (ROOT / "docs" / "operator.md").read_text() + (
        ROOT / "docs" / "protocol.md"
    ).read_text()
    for key in Settings.model_fields:
        assert f"`{key}`" in guide, f"config key {key} is not documented"
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    for action in serve._actions:
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                assert option in guide, f"serve {option} is not documented"


CODE = {p: p.read_text() for p in sorted((ROOT / "executor").rglob("*.py"))}
"""The product's sources, which the prose cites."""


@pytest.mark.parametrize("doc", PROSE, ids=lambda p: p.name)
def test_cited_files_exist(doc: Path) -> None:
    cited = re.findall(
        r"`((?:executor|tests|benchmarks|devnet|contracts|enclave)/[\w./-]+)`", doc.read_text()
    )
    missing = sorted({path for path in cited if not (ROOT / path.rstrip("/")).exists()})
    assert not missing, f"{doc.name} cites files that do not exist: {missing}"


@pytest.mark.parametrize("doc", PROSE, ids=lambda p: p.name)
def test_cited_methods_exist(doc: Path) -> None:
    """A backticked ``Class.method`` of the product's own classes names a method that exists."""
    missing = []
    for owner, member in set(re.findall(r"`([A-Z]\w+)\.(\w+)`", doc.read_text())):
        homes = [text for text in CODE.values() if re.search(rf"^class {owner}\b", text, re.M)]
        if homes and not any(
            re.search(rf"^\s+(?:async )?def {member}\b|^\s+{member}\s*[:=]", text, re.M)
            for text in homes
        ):
            missing.append(f"{owner}.{member}")
    assert not missing, f"{doc.name} cites methods that do not exist: {sorted(missing)}"
