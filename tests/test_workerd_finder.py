"""One way to find workerd, for ``oyster-executor run``, ``oyster-devnet`` and the tests alike."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from executor.errors import ExecutorError
from executor.sandbox.locate import CHECKOUT, NPM_NATIVE, find_workerd
from oyster_devnet.tools import workerd_binary


def test_the_override_wins_and_a_bad_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "workerd"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(stat.S_IRWXU)
    monkeypatch.setenv("OYSTER_WORKERD_BIN", str(fake))
    assert find_workerd() == fake == workerd_binary()
    monkeypatch.setenv("OYSTER_WORKERD_BIN", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    monkeypatch.chdir(tmp_path)
    if (CHECKOUT / NPM_NATIVE).is_file():  # the checkout's own copy is the last resort
        assert find_workerd() == CHECKOUT / NPM_NATIVE
    else:
        with pytest.raises(ExecutorError, match=r"OYSTER_WORKERD_BIN=.*missing"):
            find_workerd()


def test_found_from_any_working_directory_the_same_as_the_devnet_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OYSTER_WORKERD_BIN", raising=False)
    monkeypatch.chdir(tmp_path)
    try:
        found = find_workerd()
    except ExecutorError as e:
        pytest.skip(f"no workerd on this machine: {e}")
    assert found == workerd_binary()
    assert os.access(found, os.X_OK)
