"""One raw table's ingestion run: read new Kafka messages in bounded batches, decode, land, move offsets.

Per batch: dead letters are appended first (their table skips offsets it already holds), then the good rows with
the batch's offsets in the same commit. Consumed = landed + dead-lettered is checked for every batch.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa

from cardo_pipeline.cdc.decode import decode_batch
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.ingest.kafka_reader import ReadTarget, read_batches
from cardo_pipeline.ingest.prefetch import prefetch
from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.tables import SourceTable

# A batch is one Delta commit (~10 ms of fixed cost each). With values held without their schema text, 20k
# messages keep a partition worker at ~340 MB; on 1M events 20k took ~20% less CPU than 10k (30k: no less CPU,
# ~40 MB more per worker).
DEFAULT_BATCH_MESSAGES = 20_000


class LostEventsError(RuntimeError):
    """Consumed messages were neither landed nor dead-lettered: the batch is not committed."""


@dataclass
class IngestReport:
    table: str
    topic: str
    start_offsets: dict[int, int]
    committed_offsets: dict[int, int]
    target_offsets: dict[int, int]
    consumed: int = 0
    landed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    raw_version: int | None = None
    dead_letter_version: int | None = None
    new_columns: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def lag(self, latest_end: dict[int, int]) -> int:
        return sum(max(0, e - self.committed_offsets.get(p, 0)) for p, e in latest_end.items())


def _not_yet_dead_lettered(dead: pa.Table, already: dict[int, int]) -> pa.Table:
    """Drop dead letters a crashed earlier attempt already committed (dead letters are few: plain Python)."""
    if dead.num_rows == 0 or not any(already.values()):
        return dead
    partitions, offsets = dead["partition"].to_pylist(), dead["offset"].to_pylist()
    keep = [o >= already.get(p, 0) for p, o in zip(partitions, offsets, strict=True)]
    return dead.filter(pa.array(keep))


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while batches are ingested: a batch allocates tens of thousands of objects,
    each allocation burst triggers collections that walk every live object (millions in a Dagster process),
    and batches make no reference cycles, so reference counting frees them. Measured: a fifth of the CPU."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def evolved_columns(raw: OffsetTrackedTable, table: SourceTable) -> dict[str, pa.DataType]:
    """Columns the raw table gained from the source beyond the registry (name -> Arrow type)."""
    schema = raw.schema()
    if schema is None:
        return {}
    known = set(table.column_names)
    return {f.name: f.type for f in schema.field("after").type if f.name not in known}


def ingest_topic(
    bootstrap: str,
    table: SourceTable,
    topic: str,
    raw: OffsetTrackedTable,
    dead_letter: OffsetTrackedTable,
    *,
    partitions: Iterable[int] | None = None,
    target_end: dict[int, int] | None = None,
    max_batch_messages: int = DEFAULT_BATCH_MESSAGES,
    log=lambda message: None,
    after_batch: Callable[[IngestReport], None] = lambda report: None,
) -> IngestReport:
    """Land the topic's messages up to the end offsets seen now (or `target_end`), of every partition or only of
    `partitions`: a run that owns some partitions commits only their offsets, so runs of other partitions can
    append to the same tables at the same time (see `partition_workers`). `after_batch` is called with the
    report after each committed batch."""
    started = time.monotonic()
    if target_end is None:
        target_end = end_offsets(bootstrap, [topic])[topic]
    if partitions is not None:
        wanted = set(partitions)
        target_end = {p: e for p, e in target_end.items() if p in wanted}
    partitions = sorted(target_end)
    start = raw.next_offsets(topic, partitions)
    already_dead = dead_letter.next_offsets(topic, partitions)
    report = IngestReport(table.name, topic, dict(start), dict(start), target_end, raw_version=raw.version())
    evolved = evolved_columns(raw, table)

    with collector_paused():
        _ingest_batches(bootstrap, table, topic, raw, dead_letter, ReadTarget(topic, start, target_end),
                        max_batch_messages, report, already_dead, evolved, log, after_batch)
    report.seconds = time.monotonic() - started
    return report


def _ingest_batches(bootstrap: str, table: SourceTable, topic: str, raw: OffsetTrackedTable,
                    dead_letter: OffsetTrackedTable, target: ReadTarget, max_batch_messages: int,
                    report: IngestReport, already_dead: dict[int, int], evolved: dict[str, pa.DataType],
                    log, after_batch: Callable[[IngestReport], None]) -> None:
    for batch in prefetch(read_batches(bootstrap, target, max_batch_messages)):
        decoded = decode_batch(batch, table, ingested_at=datetime.now(UTC), evolved_columns=evolved)
        if decoded.rows.num_rows + decoded.dead_letters.num_rows != len(batch):
            raise LostEventsError(
                f"{topic}: consumed {len(batch)} but landed {decoded.rows.num_rows} and dead-lettered "
                f"{decoded.dead_letters.num_rows}; nothing of this batch was committed"
            )
        next_offsets = {**report.committed_offsets, **batch.next_offsets()}
        metadata = {"cardo.table": table.name, "cardo.batch_messages": str(len(batch))}
        dead = _not_yet_dead_lettered(decoded.dead_letters, already_dead)
        if dead.num_rows:
            # The dead-letter table is shared by every topic; delta-rs rebases appends of other app ids.
            report.dead_letter_version = dead_letter.append(dead, topic, next_offsets, metadata)
        report.raw_version = raw.append(decoded.rows, topic, next_offsets, metadata)
        report.committed_offsets = next_offsets
        report.consumed += len(batch)
        report.landed += decoded.rows.num_rows
        report.dead_lettered += decoded.dead_letters.num_rows
        report.batches += 1
        report.new_columns.update({k: str(v) for k, v in decoded.new_columns.items() if k not in evolved})
        evolved.update(decoded.new_columns)
        log(
            f"{topic}: batch {report.batches}: {len(batch)} consumed, {decoded.dead_letters.num_rows} dead-lettered, "
            f"raw version {report.raw_version}"
        )
        after_batch(report)
        del decoded, dead  # not held while the next batch decodes: a worker would hold two decoded batches
