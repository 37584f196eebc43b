"""Large backlogs ingested by worker processes, one Kafka partition at a time: the partition is Kafka's unit of
parallelism, and separate processes are how Python uses more than one core for the reader's per-message work.

Exactly-once holds as in one process: a worker commits only its partition's offsets (its own Delta app id), so
appends of different partitions to one table never conflict, and two runs of the same partition still do
(delta-rs rejects the second commit of an app id). The tables exist before a worker gets its first job.
Measured on 2 cores, 1M Debezium events over four topics: 110k events/s with two workers against 87k in one
process. Small backlogs stay in the calling process: a worker costs about a second to start.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field

from cardo_pipeline.cdc.arrow_types import DEAD_LETTER_SCHEMA, raw_arrow_schema
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.ingest.raw_ingest import DEFAULT_BATCH_MESSAGES, IngestReport, ingest_topic
from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.tables import SourceTable

WORKER_ENVIRONMENT = {
    # OpenBLAS (numpy's) starts a thread per core that spins after use: ~2% of a worker's CPU, no BLAS work
    "OPENBLAS_NUM_THREADS": "1",
    # delta-rs allocates through its own jemalloc, which keeps freed pages for 10 s by default: a worker held
    # ~25 MB of the Parquet writer's past batches. Given back after 0.1 s instead: 1M events, three workers
    # together 796 MB instead of 879 MB, ~2% more CPU.
    "_RJEM_MALLOC_CONF": "dirty_decay_ms:100,muzzy_decay_ms:0",
    # pyarrow's default pool (mimalloc) keeps freed segments too; the C library's malloc gives them back when the
    # worker trims its heap (partition_worker): another ~45 MB less for three workers, at the same speed
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}

# Below this many messages a topic is ingested in the calling process (worker start-up would cost more).
PARALLEL_MIN_BACKLOG = 100_000


@dataclass(frozen=True)
class TopicIngest:
    """One topic and the tables it lands in."""

    table: SourceTable
    topic: str
    raw_uri: str
    dead_letter_uri: str


@dataclass
class ParallelIngest:
    reports: dict[str, IngestReport]  # by topic
    workers: int
    worker_peak_rss_mb: dict[int, int] = field(default_factory=dict)  # by worker pid, as each last reported


def default_workers() -> int:
    """One more than the cores: a worker waits part of the time for fetches and Delta commits. On 2 cores, 1M
    events: three workers 113-123k events/s, two 95-105k (and more CPU per event, oddly: more contention)."""
    return max(1, (os.cpu_count() or 1) + 1)


class PartitionWorkerError(RuntimeError):
    """A worker failed its partition: its commits so far stand, the rest is read again by the next run."""


class _Worker:
    """A `partition_worker` process: one job (JSON line) in, one answer out."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cardo_pipeline.ingest.partition_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            env={**os.environ, **WORKER_ENVIRONMENT},
        )
        self.job: tuple[str, int] | None = None

    def give(self, job: TopicIngest, partition: int, end: int, bootstrap: str, max_batch_messages: int) -> None:
        self.job = (job.topic, partition)
        line = {"bootstrap": bootstrap, "table": job.table.name, "topic": job.topic, "raw_uri": job.raw_uri,
                "dead_letter_uri": job.dead_letter_uri, "partition": partition, "end": end,
                "max_batch_messages": max_batch_messages}
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(line) + "\n")

    def answer(self) -> tuple[IngestReport, int]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise PartitionWorkerError(f"the worker on {self.job} exited with {self.process.wait()}")
        answer = json.loads(line)
        if "error" in answer:
            raise PartitionWorkerError(f"{self.job}: {answer['error']}\n{answer['traceback']}")
        fields = answer["report"]
        for name in ("start_offsets", "committed_offsets", "target_offsets"):
            fields[name] = {int(p): o for p, o in fields[name].items()}  # JSON keys are strings
        self.job = None
        return IngestReport(**fields), answer["peak_rss_mb"]

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _merged(job: TopicIngest, start: dict[int, int], end: dict[int, int], parts: list[IngestReport],
            seconds: float) -> IngestReport:
    """One report for the topic, as one process would give it, from the reports of its partitions."""
    merged = IngestReport(job.table.name, job.topic, dict(start), dict(start), dict(end))
    for part in parts:
        merged.committed_offsets.update(part.committed_offsets)
        merged.consumed += part.consumed
        merged.landed += part.landed
        merged.dead_lettered += part.dead_lettered
        merged.batches += part.batches
        merged.new_columns.update(part.new_columns)
    merged.raw_version = OffsetTrackedTable(job.raw_uri).version()
    dead_versions = [part.dead_letter_version for part in parts if part.dead_letter_version is not None]
    merged.dead_letter_version = max(dead_versions) if dead_versions else None
    merged.seconds = seconds
    return merged


def ingest_topics(bootstrap: str, jobs: list[TopicIngest], *, workers: int | None = None,
                  max_batch_messages: int = DEFAULT_BATCH_MESSAGES,
                  target_ends: dict[str, dict[int, int]] | None = None, log=lambda message: None) -> ParallelIngest:
    """Ingest every job's topic up to the end offsets seen now, or up to `target_ends` (topic -> partition ->
    end: the range a sensor requested; partitions it does not name stay where they are). With more than one
    worker and a backlog of at least PARALLEL_MIN_BACKLOG, partitions go to worker processes, largest backlog
    first."""
    started = time.monotonic()
    workers = default_workers() if workers is None else workers
    ends = end_offsets(bootstrap, [job.topic for job in jobs])
    raws = {job.topic: OffsetTrackedTable(job.raw_uri) for job in jobs}
    start = {job.topic: raws[job.topic].next_offsets(job.topic, sorted(ends[job.topic])) for job in jobs}
    for topic, requested in (target_ends or {}).items():
        if topic in ends:
            ends[topic] = {p: max(start[topic][p], requested.get(p, start[topic][p])) for p in ends[topic]}
    backlog = {(job.topic, partition): end - start[job.topic][partition]
               for job in jobs for partition, end in ends[job.topic].items() if end > start[job.topic][partition]}
    parallel = workers > 1 and len(backlog) > 1 and sum(backlog.values()) >= PARALLEL_MIN_BACKLOG
    if not parallel:
        reports = {
            job.topic: ingest_topic(bootstrap, job.table, job.topic, raws[job.topic],
                                    OffsetTrackedTable(job.dead_letter_uri), target_end=ends[job.topic],
                                    max_batch_messages=max_batch_messages, log=log)
            for job in jobs
        }
        return ParallelIngest(reports, workers=1)

    parts: dict[str, list[IngestReport]] = {job.topic: [] for job in jobs}
    peaks: dict[int, int] = {}
    by_topic = {job.topic: job for job in jobs}
    todo = sorted(backlog, key=lambda unit: -backlog[unit])  # largest first: the pool ends together
    pool = [_Worker() for _ in range(min(workers, len(todo)))]  # they start while the tables are prepared

    def give_next(worker: _Worker) -> None:
        topic, partition = todo.pop(0)
        worker.give(by_topic[topic], partition, ends[topic][partition], bootstrap, max_batch_messages)

    try:
        for job in jobs:
            raws[job.topic].ensure_exists(raw_arrow_schema(job.table))
        for uri in {job.dead_letter_uri for job in jobs}:
            OffsetTrackedTable(uri).ensure_exists(DEAD_LETTER_SCHEMA)
        by_pipe = {worker.process.stdout: worker for worker in pool}
        with selectors.DefaultSelector() as waiting:
            for worker in pool:
                give_next(worker)
                waiting.register(worker.process.stdout, selectors.EVENT_READ)
            while waiting.get_map():
                for key, _ in waiting.select():
                    worker = by_pipe[key.fileobj]
                    (topic, partition), (report, peak_mb) = worker.job, worker.answer()
                    parts[topic].append(report)
                    peaks[worker.process.pid] = peak_mb
                    log(f"{topic} partition {partition}: {report.consumed} consumed, {report.dead_lettered} "
                        f"dead-lettered in {report.seconds:.1f} s (worker {worker.process.pid})")
                    if todo:
                        give_next(worker)
                    else:
                        waiting.unregister(key.fileobj)
                        worker.stop()
    finally:
        for worker in pool:
            if worker.process.poll() is None:
                worker.process.kill()
    seconds = time.monotonic() - started
    reports = {job.topic: _merged(job, start[job.topic], ends[job.topic], parts[job.topic], seconds) for job in jobs}
    return ParallelIngest(reports, workers, peaks)
