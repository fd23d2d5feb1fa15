"""Binary workerd configs: what they say (decoded back with the same schema), where the schema is
found, when the text config is used instead, and that a cold job writes no file with them.

The job semantics on binary and text configs are tested together in test_workerd_sandbox.py.
"""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from executor.sandbox import Sandbox
from executor.sandbox.capnp_config import (
    SCHEMA_ENV,
    BinaryConfigs,
    _load_schema,
    find_schema,
)
from executor.sandbox.loader import LOADER_ID, LOADER_JS, render_loader_config
from executor.sandbox.outbound import SERVICE as OUTBOUND_SERVICE
from executor.sandbox.outbound import OutboundBudget
from executor.sandbox.workerd import render_config
from tests.sandbox_helpers import (
    ECHO_JS,
    HANG_JS,
    eventually,
    files_in,
    proc_file,
    workerd_bin_or_skip,
    workerd_pids_referencing,
)

pytestmark = pytest.mark.workerd


@pytest.fixture(scope="module")
def schema_path() -> Path:
    path = find_schema(workerd_bin_or_skip())
    assert path is not None, "the npm workerd package ships workerd.capnp next to its binary"
    return path


@pytest.fixture(scope="module")
def configs(schema_path: Path) -> BinaryConfigs:
    loaded = BinaryConfigs.load(workerd_bin_or_skip())
    assert loaded is not None
    return loaded


def _decode(schema_path: Path, message: bytes) -> Any:
    with _load_schema(schema_path).Config.from_bytes(message) as config:
        return config.to_dict()


_COMPILE_TEXT = """
import sys, capnp
from pathlib import Path
config_file, schema_root = sys.argv[1:]
module = capnp.load(config_file, imports=[schema_root, str(Path(capnp.__file__).parent.parent)])
print(repr(module.config.to_dict()))
"""


def _compile_text(schema_path: Path, folder: Path, text_config: str) -> Any:
    """What workerd makes of a text config: compiled by the Cap'n Proto compiler (pycapnp, in a
    process of its own, which loads the schema through the config's import)."""
    config_file = folder / "config.capnp"
    config_file.write_text("@0xd2a1c5e8f6b7a901;\n" + text_config)  # pycapnp wants a file id
    compiled = subprocess.run(
        [sys.executable, "-c", _COMPILE_TEXT, str(config_file), str(schema_path.parent.parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    return ast.literal_eval(compiled.stdout)


def test_a_job_config_says_exactly_what_the_text_config_says(
    configs: BinaryConfigs, schema_path: Path, tmp_path: Path
) -> None:
    code = '"), (name = "evil", worker = .x) ]; const x = embed "/etc/shadow"; #\n'
    (tmp_path / "job.js").write_text(code)
    (tmp_path / "7.bin").write_bytes(b"\x00\xffs")
    for secret_file, secret in (("7.bin", b"\x00\xffs"), (None, None)):
        text = render_config(code_file="job.js", port=11003, secret_file=secret_file)
        message = configs.job(code.encode(), port=11003, secret=secret)
        assert message is not None
        decoded = _decode(schema_path, message)
        assert decoded == _compile_text(schema_path, tmp_path, text)
        module = decoded["services"][0]["worker"]["modules"][0]
        assert module == {"name": "main", "esModule": code}  # a value, never config syntax
        assert len(decoded["services"]) == 1


def test_the_loader_config_says_exactly_what_its_text_config_says(
    configs: BinaryConfigs, schema_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "loader.js").write_text(LOADER_JS)
    text = render_loader_config(loader_file="loader.js", port=11005)
    decoded = _decode(schema_path, configs.loader(LOADER_JS, port=11005))
    assert decoded == _compile_text(schema_path, tmp_path, text)
    assert decoded["services"][0]["worker"]["bindings"] == [
        {"name": "LOADER", "workerLoader": {"id": LOADER_ID}}
    ]


@pytest.mark.parametrize(
    "code", [b"export default {}; // \xff", b"export default {}; // \x00", b"\xef\xbb"]
)
def test_code_a_text_field_cannot_carry_verbatim_keeps_the_text_config(
    configs: BinaryConfigs, code: bytes
) -> None:
    assert configs.job(code, port=0, secret=None) is None


def test_the_schema_is_found_or_said_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    workerd = workerd_bin_or_skip()
    monkeypatch.setenv(SCHEMA_ENV, str(tmp_path / "nowhere.capnp"))
    assert find_schema(workerd) is None
    with caplog.at_level("INFO", logger="executor.sandbox.capnp_config"):
        assert BinaryConfigs.load(workerd) is None
    assert "workerd starts from text configs" in caplog.text
    monkeypatch.delenv(SCHEMA_ENV)
    lone = tmp_path / "bin" / "workerd"  # a binary with no schema anywhere near it
    lone.parent.mkdir()
    lone.symlink_to("/bin/true")
    assert find_schema(lone) is None


async def test_a_cold_job_reads_its_config_from_memory_and_writes_no_file(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    sandbox = Sandbox(
        workerd_bin=workerd_bin_or_skip(),
        runtime_path=runtime,
        secret_store_path=tmp_path,
        pool=None,
    )
    assert sandbox.binary_configs
    (tmp_path / "3.bin").write_bytes(b"three")
    job = asyncio.ensure_future(sandbox.execute(HANG_JS, b"", deadline_ms=3000, secret_id=3))
    await eventually(lambda: workerd_pids_referencing(runtime.resolve()))
    await asyncio.sleep(0.3)  # the request is in, hanging
    assert files_in(runtime) == []  # neither the code nor the secret was written out
    (pid,) = workerd_pids_referencing(runtime.resolve())
    argv = proc_file(pid, "cmdline").split(b"\x00")
    config = argv[argv.index(b"--binary") + 1].decode()
    fd = config.removeprefix("/proc/self/fd/")
    assert os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:workerd-config")
    assert (await job).error_code == 4
    echo = await sandbox.execute(ECHO_JS, b"x", deadline_ms=5000)
    assert echo.output == b"echo:x"


def test_one_schema_per_process_whatever_its_path(
    configs: BinaryConfigs,
    schema_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Cap'n Proto compiler aborts the process on a second file with a known file id: the same
    text elsewhere is the same schema, other text (another workerd version) is refused."""
    copy = tmp_path / "same" / "workerd.capnp"
    copy.parent.mkdir()
    copy.write_bytes(schema_path.read_bytes())
    assert _load_schema(copy) is _load_schema(schema_path)
    other = tmp_path / "other" / "workerd.capnp"
    other.parent.mkdir()
    other.write_bytes(schema_path.read_bytes() + b"\n# another version\n")
    with pytest.raises(ValueError, match=r"another workerd\.capnp is already loaded"):
        _load_schema(other)
    monkeypatch.setenv(SCHEMA_ENV, str(other))
    with caplog.at_level("WARNING", logger="executor.sandbox.capnp_config"):
        assert BinaryConfigs.load(workerd_bin_or_skip()) is None
    assert "workerd starts from text configs" in caplog.text


def test_a_workerd_that_cannot_start_from_a_binary_config_gets_text_configs(
    configs: BinaryConfigs,
    schema_path: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Checked once, at load: a workerd that does not come up from a binary config (another
    version than its schema, no readable memfd) must not fail jobs later."""
    fake = tmp_path / "bin" / "workerd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'cannot read that config' >&2\nexit 3\n")
    fake.chmod(0o755)
    (fake.parent / "workerd.capnp").write_bytes(schema_path.read_bytes())
    with caplog.at_level("WARNING", logger="executor.sandbox.capnp_config"):
        assert BinaryConfigs.load(fake) is None
    assert "exited with status 3: cannot read that config" in caplog.text
    assert "workerd starts from text configs" in caplog.text


def test_the_outbound_budget_configs_say_what_their_text_configs_say(
    configs: BinaryConfigs, schema_path: Path, tmp_path: Path
) -> None:
    budget = OutboundBudget(fetches=3, received=1000)
    code = "export default {};"
    (tmp_path / "job.js").write_text(code)
    text = render_config(code_file="job.js", port=0, outbound=budget)
    decoded = _decode(schema_path, configs.job(code.encode(), port=0, secret=None, outbound=budget))
    assert decoded == _compile_text(schema_path, tmp_path, text)
    assert decoded["services"][0]["worker"]["globalOutbound"]["name"] == OUTBOUND_SERVICE
    assert decoded["services"][1]["name"] == OUTBOUND_SERVICE
    (tmp_path / "loader.js").write_text(LOADER_JS)
    text = render_loader_config(loader_file="loader.js", port=0, outbound=budget)
    decoded = _decode(schema_path, configs.loader(LOADER_JS, port=0, outbound=budget))
    assert decoded == _compile_text(schema_path, tmp_path, text)
    bindings = decoded["services"][0]["worker"]["bindings"]
    assert (bindings[1]["name"], bindings[1]["service"]["name"]) == ("BUDGET", OUTBOUND_SERVICE)
    # Off (the default): the configs are exactly those without a budget.
    assert configs.job(code.encode(), port=0, secret=None, outbound=OutboundBudget()) == (
        configs.job(code.encode(), port=0, secret=None)
    )
