"""Exactly once under fire: SIGKILL the ingest process at random points, restart the broker mid-run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cardo_pipeline.stack import Stack
from cardo_pipeline.tables import SOURCE_TABLES
from cardo_pipeline_tests.raw_helpers import audit_topic, fresh_prefix, produce_book

pytestmark = [pytest.mark.stack, pytest.mark.slow]
KILLS = 20


def _ingest_command(lake: Path, prefix: str, stack: Stack, batch: int) -> tuple[list[str], dict[str, str]]:
    env = {
        **os.environ, "CARDO_TOPIC_PREFIX": prefix, "CARDO_LAKE_DIR": str(lake),
        "CARDO_KAFKA_PORT": str(stack.settings.kafka_port),
    }
    return [sys.executable, "-m", "cardo_pipeline.cli", "ingest", "--batch", str(batch)], env


def _assert_every_offset_once(lake: Path, prefix: str, expected_messages: int) -> None:
    held_total = 0
    for table in SOURCE_TABLES:
        audit, held = audit_topic(str(lake), table.name, f"{prefix}.public.{table.name}")
        assert audit.passed, audit.samples
        held_total += held
    assert held_total == expected_messages


def _remaining(lake: Path, prefix: str, stack: Stack) -> int:
    """Messages in the test's topics not yet committed to raw (by the offsets in the raw tables)."""
    from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
    from cardo_pipeline.kafka_topics import end_offsets

    topics = {t.name: f"{prefix}.public.{t.name}" for t in SOURCE_TABLES}
    ends = end_offsets(stack.settings.kafka_bootstrap, topics.values())
    left = 0
    for name, topic in topics.items():
        committed = OffsetTrackedTable(str(lake / "raw" / name)).next_offsets(topic, sorted(ends[topic]))
        left += sum(end - committed[p] for p, end in ends[topic].items())
    return left


@pytest.mark.timeout(1500)
def test_sigkill_at_random_points_loses_and_duplicates_nothing(stack: Stack, tmp_path: Path) -> None:
    prefix = fresh_prefix("crash")
    bootstrap = stack.settings.kafka_bootstrap
    expected = produce_book(bootstrap, prefix, loans=2600, months=24, seed=11)
    assert expected >= 200_000
    command, env = _ingest_command(tmp_path, prefix, stack, batch=2_000)
    chance = random.Random(20261123)
    kills_mid_work, seed = 0, 11
    for _ in range(120):
        if kills_mid_work >= KILLS:
            break
        # ingest runs at ~100k events/s: topped up before it can outrun the kills (a run that ends before its
        # kill tests nothing)
        if _remaining(tmp_path, prefix, stack) < 150_000:
            seed += 1
            expected += produce_book(bootstrap, prefix, loans=1_500, months=24, seed=seed)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(chance.uniform(0.9, 2.0))  # start-up takes ~0.8 s: kills land mid-batch or mid-commit
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), stderr.decode()[-2000:]
        kills_mid_work += killed and _remaining(tmp_path, prefix, stack) > 0
    assert kills_mid_work >= KILLS
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-2000:]
    _assert_every_offset_once(tmp_path, prefix, expected)
    print(f"{kills_mid_work} kills mid-ingest, {expected} events, each offset exactly once")


@pytest.mark.timeout(900)
def test_a_broker_restart_mid_run_fails_cleanly_or_retries_and_the_next_run_loses_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    prefix = fresh_prefix("restart")
    expected = produce_book(stack.settings.kafka_bootstrap, prefix, loans=600, months=24, seed=5)
    command, env = _ingest_command(tmp_path, prefix, stack, batch=2_000)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
        stack.kafka.stop()
        time.sleep(2)
        stack.kafka.start()
        _, stderr = proc.communicate(timeout=300)
    finally:
        stack.up(log=lambda _: None)  # Connect may have given up while the broker was away
    assert proc.returncode == 0 or "Error" in stderr, "a failed run must say why"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _assert_every_offset_once(tmp_path, prefix, expected)
