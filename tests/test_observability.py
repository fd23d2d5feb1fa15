"""What an operator sees of a running node: Prometheus metrics and JSON logs, end to end on anvil.

One daemon (3 real cgroup slices, real workerd) answers real jobs; meanwhile ``/metrics`` is
scraped on its own address and every log line is captured as JSON.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from executor import logs
from executor.admin.sites import parse_tcp_addr
from executor.daemon import Daemon
from executor.metrics import Metrics
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import NodeFiles, init_and_register, write_node_files
from tests.chain_helpers import ROLES
from tests.node_helpers import CODE_ECHO, wait_registered, wait_until
from tests.sandbox_helpers import slice_parent

OWNER, GAS, USER = ROLES.owner, ROLES.gas, ROLES.user

CODE_SLOW = """
export default {
  async fetch(request) {
    await new Promise((resolve) => setTimeout(resolve, 2500));
    return new Response("slow:" + await request.text());
  }
};
"""
CODE_BROKEN = "export default { fetch( { return new Response('x') } };"


@dataclass
class Node:
    daemon: Daemon
    files: NodeFiles
    log: io.StringIO

    async def scrape(self) -> dict[str, float]:
        async with aiohttp.ClientSession() as session:
            async with session.get(self.daemon.metrics_url) as response:
                assert response.status == 200
                return parse_exposition(await response.text())


def parse_exposition(text: str) -> dict[str, float]:
    """``{'name{label="v",...}': value}`` for every sample line."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every record of the test, formatted as the daemon's ``--log-format json`` would."""
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
async def node(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet, json_log: io.StringIO
) -> AsyncIterator[Node]:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    with slice_parent(count=3) as parent:
        daemon = Daemon(
            files.settings,
            parse_tcp_addr("127.0.0.1:0"),
            cgroup_parent=parent,
            shutdown_grace_s=5.0,
            metrics_addr="127.0.0.1:0",
        )
        async with daemon:
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
            await wait_registered(daemon)
            yield Node(daemon, files, json_log)


async def test_metrics_move_as_jobs_run_and_slices_are_taken_and_freed(
    node: Node, devnet: Devnet
) -> None:
    assert node.daemon.metrics_url.startswith("http://127.0.0.1:")
    assert node.daemon.metrics_url != node.daemon.admin_url + "metrics"
    before = await node.scrape()
    assert before['oyster_executor_slices{state="free"}'] == 3
    assert before['oyster_executor_slices{state="busy"}'] == 0
    assert before['oyster_executor_slices{state="out_of_service"}'] == 0
    assert before['oyster_executor_node_state{state="active"}'] == 1
    assert before['oyster_executor_node_state{state="drained"}'] == 0
    assert before["oyster_executor_job_duration_seconds_count"] == 0
    assert before["oyster_executor_last_block"] > 0

    slow = await devnet.save_code(USER, CODE_SLOW)
    job_id = await devnet.create_job(USER, codehash=slow, code_inputs=b"x", deadline_ms=10_000)

    async def one_busy() -> dict[str, float] | None:
        now = await node.scrape()
        return now if now['oyster_executor_slices{state="busy"}'] == 1 else None

    during = await wait_until(one_busy, timeout=20, what="a slice to be taken by the slow job")
    assert during['oyster_executor_slices{state="free"}'] == 2
    await wait_until(lambda: devnet.job_responses(job_id), timeout=30, what="the slow job's output")

    broken = await devnet.save_code(USER, CODE_BROKEN)
    broken_job = await devnet.create_job(USER, codehash=broken, code_inputs=b"", deadline_ms=5000)
    await wait_until(lambda: devnet.job_responses(broken_job), timeout=30, what="error 3 output")

    async def settled() -> dict[str, float] | None:
        now = await node.scrape()
        return now if now["oyster_executor_job_duration_seconds_count"] == 2 else None

    after = await wait_until(settled, timeout=10, what="both jobs' summaries")
    assert after['oyster_executor_slices{state="free"}'] == 3
    assert after['oyster_executor_slices{state="busy"}'] == 0
    assert after['oyster_executor_job_outcomes_total{error_code="0"}'] == 1
    assert after['oyster_executor_job_outcomes_total{error_code="3"}'] == 1
    assert after['oyster_executor_transactions_total{kind="output",result="mined"}'] == 2
    runs = [after[f'oyster_executor_sandbox_runs_total{{path="{p}"}}'] for p in ("warm", "cold")]
    assert sum(runs) == 2 and before['oyster_executor_sandbox_runs_total{path="warm"}'] == 0
    assert after["oyster_executor_job_duration_seconds_sum"] >= 2.5  # the slow job slept 2.5 s
    assert after["oyster_executor_last_block"] > before["oyster_executor_last_block"]
    assert not any(k.startswith("oyster_executor_jobs_not_submitted_total{") for k in after)


async def test_json_logs_parse_and_every_job_line_carries_its_job_id(
    node: Node, devnet: Devnet
) -> None:
    codehash = await devnet.save_code(USER, CODE_ECHO)
    job_ids = [
        await devnet.create_job(USER, codehash=codehash, code_inputs=b"hi", deadline_ms=5000)
        for _ in range(2)
    ]
    for job_id in job_ids:
        await wait_until(lambda j=job_id: devnet.job_responses(j), timeout=30, what="outputs")
    await wait_until(
        lambda: node.log.getvalue().count(": done in ") >= 2,
        timeout=10,
        what="the summary lines",
    )
    entries = [json.loads(line) for line in node.log.getvalue().splitlines()]  # each line parses
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    mentions = re.compile(r"\bjob (\d+)\b")
    job_lines = [e for e in entries if mentions.search(e["message"])]
    assert job_lines
    for entry in job_lines:
        assert entry.get("job_id") == int(mentions.search(entry["message"]).group(1)), entry
    for job_id in job_ids:
        summaries = [
            e
            for e in entries
            if e.get("job_id") == job_id and f"job {job_id}: done in" in e["message"]
        ]
        assert len(summaries) == 1, summaries
        assert "error_code=0" in summaries[0]["message"]
        assert re.search(r"tx 0x[0-9a-f]{64}", summaries[0]["message"])
    # No per-poll noise at INFO: a job costs a bounded handful of INFO lines, not one per poll.
    per_job = [sum(1 for e in entries if e.get("job_id") == j) for j in job_ids]
    assert max(per_job) <= 5, per_job


def test_a_metrics_registry_per_daemon() -> None:
    one, two = Metrics(), Metrics()
    one.transaction("slash", "mined")
    one.job_outcome(4)
    mined = b'oyster_executor_transactions_total{kind="slash",result="mined"} 1.0'
    assert mined in one.exposition()
    assert b"oyster_executor_transactions_total{" not in two.exposition()
    assert b'oyster_executor_job_outcomes_total{error_code="4"} 1.0' in one.exposition()


def test_sample_dashboard_queries_only_metrics_the_daemon_exports() -> None:
    dashboard = json.loads((Path(__file__).parents[1] / "docs/grafana-dashboard.json").read_text())
    exported = Metrics()
    exported.watch_slices(None)
    names = {
        name
        for line in exported.exposition().decode().splitlines()
        if line.startswith("# TYPE ")
        for name in [line.split()[2]]
    }
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"oyster_executor_[a-z_]+", target["expr"])
    }
    suffixes = ("_bucket", "_total", "_sum", "_count")
    assert used and all(
        n in names or any(n.endswith(s) and n.removesuffix(s) in names for s in suffixes)
        for n in used
    ), used - names


def test_json_lines_keep_secrets_masked_and_carry_the_job_label() -> None:
    from executor import redact

    stream = io.StringIO()
    logger = logging.getLogger("tests.observability.json")
    logger.addHandler(logs.make_handler("json", stream))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    secret = "0x" + "5a" * 32
    redact.register_secret(secret)
    try:
        with logs.job_label(42):
            logger.info("gas key is %s", secret)
            try:
                raise ValueError(f"bad key {secret}")
            except ValueError:
                logger.exception("failed")
        logger.info("outside any job")
    finally:
        logger.handlers.clear()
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["job_id"] == 42 and secret[2:] not in json.dumps(first)
    assert "***" in first["message"]
    assert second["job_id"] == 42 and secret[2:] not in second["exception"]
    assert "job_id" not in third


def test_text_lines_name_the_job_once() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.observability.text")
    logger.addHandler(logs.make_handler("text", stream))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with logs.job_label(7):
            logger.info("job 7: done")
            logger.info("slice workerd_3 emptied")
    finally:
        logger.handlers.clear()
    first, second = stream.getvalue().splitlines()
    assert first.endswith("job 7: done")
    assert second.endswith("slice workerd_3 emptied [job 7]")


def test_cli_log_format_json_writes_one_json_object_per_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = json.loads((Path(__file__).parents[1] / "config.example.json").read_text())
    config["no_such_key"] = 1  # start-up logs a warning about it
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "executor", "--log-format", "json", "doctor", "--config-file", path],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    lines = result.stderr.splitlines()
    entries = [json.loads(line) for line in lines]  # every stderr line is one JSON object
    assert any("no_such_key" in e["message"] and e["level"] == "WARNING" for e in entries)
