"""`cardo bench freshness`: how long a change committed in Postgres takes to be visible in `curated/loans`,
through the real path: Debezium, Kafka, `kafka_offsets_sensor` and the run it requests (raw, then curated),
all launched by the Dagster daemon.

Single changes are committed one at a time, each after the previous one became visible and a random pause (so
commits fall at any phase of the sensors' ticks); a change's latency is the time from its commit to the first
poll (every 0.1 s) of the curated Delta table that shows it. A daemon already running for the instance
(`make dev`) is used; otherwise one is started for the run and stopped after. The changes set a loan's
servicer_notes to a marker ("cardo freshness <run> <n>") in the local servicing database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import psycopg

from cardo_pipeline.ingest.delta_log import load_table
from cardo_pipeline.settings import CardoSettings, ensure_dagster_home, sensor_interval_seconds
from cardo_pipeline.stack import Stack
from cardo_pipeline.tables import TABLES_BY_NAME

MARK = "cardo freshness"
REPO_ROOT = Path(__file__).resolve().parents[2]


class FreshnessError(RuntimeError):
    """The benchmark cannot run or a change never became visible."""


def _daemon_running(dagster_home: Path) -> bool:
    """Whether a `dagster-daemon` (alone or under `dagster dev`) runs for this instance (Linux /proc; a stopped
    daemon's heartbeats stay in the instance for minutes, so they cannot tell)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if not any(part.endswith(b"dagster-daemon") for part in command[:2]):
                continue
            environment = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0")
                               if b"=" in item)
        except OSError:
            continue
        if Path(environment.get(b"DAGSTER_HOME", b"").decode()).resolve() == dagster_home.resolve():
            return True
    return False


def _start_daemon(settings: CardoSettings, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(settings.dagster_home)}
    ensure_dagster_home(settings.dagster_home)
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
        cwd=REPO_ROOT, env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )


def _visible(curated_uri: str, loan_id: int, marker: str) -> bool:
    """Whether the loan's curated row carries the marker."""
    if load_table(curated_uri) is None:
        return False
    # polars applies the deletion vectors (a replaced row stays in its file, marked deleted); pyarrow refuses them
    notes = pl.scan_delta(curated_uri).filter(pl.col("loan_id") == loan_id).select("servicer_notes").collect()
    return marker in notes["servicer_notes"].to_list()


def _seconds_until_visible(curated_uri: str, loan_id: int, marker: str, timeout_s: float, poll_s: float,
                           hint: str = "") -> float:
    committed = time.monotonic()
    while not _visible(curated_uri, loan_id, marker):
        if time.monotonic() - committed > timeout_s:
            raise FreshnessError(f"a change to loan {loan_id} was not visible in {curated_uri} after "
                                 f"{timeout_s:.0f} s{hint}")
        time.sleep(poll_s)
    return time.monotonic() - committed


def _commit_change(connection: psycopg.Connection, loan_id: int, marker: str) -> None:
    with connection.transaction():
        connection.execute("UPDATE loans SET servicer_notes = %s, updated_at = now() WHERE loan_id = %s",
                           (marker, loan_id))


def bench_freshness(changes: int = 20, pause_s: float = 5.0, warmup_timeout_s: float = 300,
                    timeout_s: float = 120, log=print) -> dict:
    settings = CardoSettings.from_env()
    stack = Stack(settings)
    if not all(s.healthy for s in stack.status()):
        stack.up(log=lambda _: None)
    with psycopg.connect(settings.pg_dsn, autocommit=True) as connection:
        loans = [row[0] for row in connection.execute("SELECT loan_id FROM loans ORDER BY loan_id")]
        if not loans:
            raise FreshnessError("servicing.loans is empty: run `make demo` (or `cardo simulate`) first")
        daemon = None
        if not _daemon_running(settings.dagster_home):
            log_path = settings.home / "logs" / "bench-freshness-daemon.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log(f"starting the Dagster daemon (log {log_path})")
            daemon = _start_daemon(settings, log_path)
        try:
            return _measure(settings, connection, loans, changes, pause_s, warmup_timeout_s, timeout_s,
                            daemon is not None, log)
        finally:
            if daemon is not None:
                daemon.terminate()
                try:
                    daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    daemon.kill()


def _measure(settings: CardoSettings, connection: psycopg.Connection, loans: list[int], changes: int,
             pause_s: float, warmup_timeout_s: float, timeout_s: float, own_daemon: bool, log) -> dict:
    curated = settings.lake_table(TABLES_BY_NAME["loans"].layout.curated)
    rng = np.random.default_rng()
    run = uuid.uuid4().hex[:8]
    # Warm-up: the first change also waits for any backlog and for the daemon's first ticks; not measured.
    warmup_loan, warmup = int(rng.choice(loans)), f"{MARK} {run} warm-up"
    _commit_change(connection, warmup_loan, warmup)
    log("warming up: waiting for a first change to reach curated/loans")
    _seconds_until_visible(curated, warmup_loan, warmup, warmup_timeout_s, poll_s=0.5,
                           hint=": is the daemon running its sensors? (see the daemon log)")

    latencies = []
    for i, loan in enumerate(int(x) for x in rng.choice([x for x in loans if x != warmup_loan], changes,
                                                         replace=False)):
        time.sleep(float(rng.uniform(0, pause_s)))  # a random phase against the sensors' ticks
        marker = f"{MARK} {run} {i}"
        _commit_change(connection, loan, marker)
        latencies.append(_seconds_until_visible(curated, loan, marker, timeout_s, poll_s=0.1))
        log(f"change {i + 1}/{changes} (loan {loan}): visible after {latencies[-1]:.1f} s")
    values = np.array(latencies)
    return {
        "benchmark": "freshness", "changes": changes,
        "sensor_interval_s": sensor_interval_seconds(),  # as the daemon's code location reads it
        "daemon": "started by the benchmark" if own_daemon else "already running",
        "p50_s": round(float(np.percentile(values, 50)), 1), "p95_s": round(float(np.percentile(values, 95)), 1),
        "max_s": round(float(values.max()), 1), "min_s": round(float(values.min()), 1),
    }

