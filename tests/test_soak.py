"""A bounded soak: a few hundred jobs in blocks on anvil, the CPU kept busy and the websocket cut
every few seconds; no job may be lost (no answer) or doubled (two submissions by this node).
The long run is ``python -m tests.soak`` (its figures in BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak import soak

pytestmark = pytest.mark.alone  # its burner would slow every test beside it


async def test_no_job_is_lost_or_doubled_under_load_and_websocket_cuts(tmp_path: Path) -> None:
    figures = await soak(tmp_path, jobs=200, per_block=20, burn=1, cut_every_s=2.0)
    print("\n" + figures.summary())
    assert figures.jobs == 200 and figures.cuts >= 2
    assert (figures.lost, figures.doubled) == ([], [])
    assert figures.parts_down == {}
