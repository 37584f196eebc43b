"""`cardo bench checks`: the Pandera checks of the curated loans tables on the apply benchmark's book (N loans, M
change events applied, so the current table carries deletion vectors), timed, with their peak memory.

The checks run in a fresh child process, the way a Dagster run's step would, so its peak resident size is the
checks' own plus what any such process holds (Python, polars, pandera, pandas: `baseline_rss_mb`, ~180 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cardo_pipeline.quality.validate import DEFAULT_CHUNK_ROWS


def _peak_rss_mb() -> int:
    """This process's peak resident size: VmHWM belongs to the address space exec made (ru_maxrss would carry the
    parent's peak over from the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_checks(lake: str, chunk_rows: int) -> dict:
    """In the child: validate curated/loans and its history against their models."""
    from cardo_pipeline.curate.models import current_model, history_model, history_values_model
    from cardo_pipeline.quality.validate import delta_source, validate
    from cardo_pipeline.tables import TABLES_BY_NAME, lake_uri

    loans = TABLES_BY_NAME["loans"]
    baseline = _peak_rss_mb()
    results = {}
    for model, path in ((current_model(loans), loans.layout.curated), (history_model(loans), loans.layout.history),
                        (history_values_model(loans), loans.layout.history)):
        started = time.perf_counter()
        report = validate(model, delta_source(lake_uri(lake, path)), chunk_rows=chunk_rows)
        results[model.name] = {"rows_checked": report.rows_checked, "failures": report.failure_cases,
                               "seconds": round(time.perf_counter() - started, 2)}
    return {"models": results, "baseline_rss_mb": baseline, "peak_rss_mb": _peak_rss_mb()}


def bench_checks(rows: int, changes: int, seed: int = 7, chunk_rows: int = DEFAULT_CHUNK_ROWS, log=print) -> dict:
    from cardo_pipeline.bench.apply import RAW_BATCH, TOPIC, build_book, change_events
    from cardo_pipeline.curate.storage import CuratedStore
    from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
    from cardo_pipeline.tables import TABLES_BY_NAME

    lake = Path(tempfile.mkdtemp(prefix="cardo-bench-checks-"))
    try:
        log(f"building a book of {rows:,} loans")
        locations, naive = build_book(lake, rows, seed)
        log(f"applying {changes:,} change events (the current table gets deletion vectors)")
        events = change_events(rows, changes, seed, naive)
        raw = OffsetTrackedTable(locations.raw)
        for start in range(0, events.num_rows, RAW_BATCH):
            batch = events.slice(start, RAW_BATCH)
            raw.append(batch, TOPIC, {0: start + batch.num_rows}, {})
        CuratedStore(TABLES_BY_NAME["loans"], locations).apply()
        shutil.rmtree(lake / "naive", ignore_errors=True)
        os.sync()
        log("running the checks in a fresh process")
        started = time.perf_counter()
        child = subprocess.run([sys.executable, "-m", "cardo_pipeline.bench.checks", str(lake), str(chunk_rows)],
                               capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        return {"benchmark": "checks", "rows": rows, "changes": events.num_rows, "chunk_rows": chunk_rows,
                "seconds": round(seconds, 1), **measured,
                "passed": all(m["failures"] == 0 for m in measured["models"].values())}
    finally:
        shutil.rmtree(lake, ignore_errors=True)


if __name__ == "__main__":
    arguments = argparse.ArgumentParser()
    arguments.add_argument("lake")
    arguments.add_argument("chunk_rows", type=int)
    parsed = arguments.parse_args()
    print(json.dumps(run_checks(parsed.lake, parsed.chunk_rows)))
