"""One partition worker process (`python -m cardo_pipeline.ingest.partition_worker`), driven by
`partition_workers.ingest_topics`: it reads one job per line on stdin (JSON), ingests that topic partition and
answers one line on stdout (the report as JSON, or the error), until stdin closes.

A plain subprocess rather than multiprocessing: a spawned multiprocessing child imports its parent's main
module first (in a Dagster run that is Dagster's CLI, seconds of imports); this one imports only the ingest.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.abc
import json
import os
import resource
import signal
import sys
import traceback

from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.ingest.raw_ingest import IngestReport, ingest_topic
from cardo_pipeline.tables import TABLES_BY_NAME

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None


def die_with_parent() -> None:
    """A worker must not outlive the run that started it (a killed or terminated run would leave it writing)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


class WithoutPandas(importlib.abc.MetaPathFinder):
    """pyarrow imports pandas the first time it converts a Python value, only to ask whether the value is a
    pandas object; a worker never has one, and the import cost each worker ~0.5 s of CPU and ~35 MB."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"{name} is not loaded in a partition worker", name=name)
        return None


TRIM_EVERY_BATCHES = 8


def release_free_memory() -> None:
    """Give the heap's free pages back: glibc keeps them for later allocations, and a long-running worker's heap
    creeps up with fragmentation (and the next partition may be another table's, with other sizes). Done between
    partitions and every TRIM_EVERY_BATCHES batches: after every batch, a worker used ~10% more CPU in page
    faults."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def after_batch(report: IngestReport) -> None:
    if report.batches % TRIM_EVERY_BATCHES == 0:
        release_free_memory()


def run_job(job: dict) -> dict:
    report = ingest_topic(
        job["bootstrap"], TABLES_BY_NAME[job["table"]], job["topic"], OffsetTrackedTable(job["raw_uri"]),
        OffsetTrackedTable(job["dead_letter_uri"]), partitions=[job["partition"]],
        target_end={job["partition"]: job["end"]}, max_batch_messages=job["max_batch_messages"],
        after_batch=after_batch,
    )
    return {"report": dataclasses.asdict(report),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    die_with_parent()
    sys.meta_path.insert(0, WithoutPandas())
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the answer channel
    for line in sys.stdin:
        try:
            answer = run_job(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            answer = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        out.write(json.dumps(answer) + "\n")
        out.flush()
        release_free_memory()


if __name__ == "__main__":
    main()
