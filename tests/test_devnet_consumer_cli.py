"""``oyster-devnet up`` then ``oyster-devnet consumer``: from a JS file to a contract callback.

The sample OysterConsumer is deployed, owns the job, and its ``oysterResultCall`` stores the output
the executor submitted (docs/dapp.md).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.node_helpers import wait_until
from tests.test_devnet_cli import CODE, devnet_cli


async def test_up_then_consumer_stores_the_result_in_the_contract(tmp_path: Path) -> None:
    state_file = tmp_path / "devnet.json"
    up = await devnet_cli("up", "--state-file", str(state_file))
    try:
        await wait_until(state_file.is_file, timeout=90, what="`oyster-devnet up` to be ready")
        code = tmp_path / "square.js"
        code.write_text(CODE)
        run = await devnet_cli(
            "consumer", str(code), "--input", '{"n": 12}', "--state-file", str(state_file)
        )
        out, _ = await asyncio.wait_for(run.communicate(), 60)
        text = out.decode()
        assert run.returncode == 0, text
        assert "OysterConsumer deployed at 0x" in text
        assert "oysterResultCall succeeded" in text
        assert 'output: {"square":144}' in text and "stored: error_code 0" in text, text
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGINT)
        await asyncio.wait_for(up.communicate(), 60)
    assert up.returncode == 0
