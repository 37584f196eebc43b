"""Raw ingestion on Spark: a bounded Kafka offset range per partition, decoded by the project's own decoder, landed in
the raw Delta table under the same exactly-once and dead-letter contracts as `ingest.raw_ingest.ingest_topic`.

How one run goes:
1. The range: per partition from the offsets committed in the raw table (delta-rs app transactions,
   `offsets_app_id(topic, p)`) to `target_end` (a sensor's run request, a backfill) or the topic's end offsets now.
2. Rounds of at most `max_batch_messages` offsets per partition: one Spark batch read of exactly that range with the
   Kafka source (`startingOffsets`/`endingOffsets` JSON, `failOnDataLoss` on: an offset that is gone fails loudly),
   decoded with `mapInArrow` calling `cdc.decode.decode_batch` on each Arrow batch of key/value/partition/offset/
   timestamp, so the semantics are the local path's by construction. Each decoded batch emits its raw rows, its
   dead letters and one summary row (messages consumed, image columns beyond the registry); the round's output is
   persisted, so it is decoded once for its counts and its writes.
3. Consumed = landed + dead-lettered is checked per decoded batch (on the executor, as the local path does) and
   per partition of the round on the driver, before anything of the round is committed.
4. Per partition of the round: its dead letters not held yet (offsets at or past the dead-letter table's own
   committed offset) go to the shared dead-letter table first, then the raw rows, each one Delta commit made by
   Spark's Delta writer with `txnAppId = offsets_app_id(topic, p)` and `txnVersion = the next offset`: the rows and
   the offset they move are in one commit (also when no row landed: Delta commits the app transaction alone).
   Readers of the local path (`OffsetTrackedTable.next_offsets`, delta-rs `transaction_version`, the curated
   apply's `raw_increments`) read these commits as they read delta-rs's.

Why one commit per partition rather than one for all: Spark's Delta writer records one app transaction per write;
per-partition commits keep every offset in the commit of its rows without reaching into Delta's Scala API through
py4j. A crash between two partitions' commits leaves each partition consistent on its own; the rerun resumes each
from its own committed offset. Spark's writer also skips a write whose txnVersion is not above the table's for
that app id, and a concurrent commit of the same app id fails ours (ConcurrentTransactionException): a second run
of the same range cannot double it. The offset a write expects to move from is checked right before it.

Tables are created by delta-rs (`OffsetTrackedTable.ensure_exists`, the local path's schema and table properties),
so Spark never chooses the protocol: delta-rs can keep appending to a table Spark wrote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from cardo_pipeline.cdc.arrow_types import DEAD_LETTER_SCHEMA, UTC_MICROS, raw_arrow_schema, wider_type
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable, load_table, offsets_app_id
from cardo_pipeline.ingest.raw_ingest import IngestReport, LostEventsError, evolved_columns
from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.tables import SourceTable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["DEFAULT_SPARK_BATCH_MESSAGES", "ConcurrentIngestError", "SparkCommit", "ingest_topic_with_spark"]

# Offsets per partition and round: each round costs a Kafka read, a decode and two Delta commits per partition
# (about a second of Spark's fixed cost), so rounds are larger than the local path's batches; the decoded round is
# persisted in memory and on disk, so its size bounds disk use rather than memory.
DEFAULT_SPARK_BATCH_MESSAGES = 200_000

_ROW, _DEAD, _BATCH = "row", "dead", "batch"


class ConcurrentIngestError(RuntimeError):
    """Another run moved a partition's offsets while this one was reading: nothing of the partition is committed."""


@dataclass(frozen=True)
class SparkCommit:
    """One commit the run made: `table` is "raw" or "dead_letter"; `next_offset` is the app transaction's version."""

    table: str
    partition: int
    next_offset: int
    version: int
    rows: int


def ingest_topic_with_spark(
    spark: SparkSession,
    bootstrap: str,
    table: SourceTable,
    topic: str,
    raw_uri: str,
    dead_letter_uri: str,
    *,
    target_end: dict[int, int] | None = None,
    partitions: Iterable[int] | None = None,
    max_batch_messages: int = DEFAULT_SPARK_BATCH_MESSAGES,
    log: Callable[[str], None] = lambda message: None,
    after_commit: Callable[[SparkCommit], None] = lambda commit: None,
) -> IngestReport:
    """Land `topic`'s messages from the offsets committed in the raw table up to `target_end` (or the end offsets
    seen now), of every partition or only of `partitions`, with a Spark batch job per round. `after_commit` is
    called after every Delta commit the run makes (dead-letter and raw)."""
    started = time.monotonic()
    if max_batch_messages < 1:
        raise ValueError(f"max_batch_messages must be at least 1, got {max_batch_messages}")
    if target_end is None:
        target_end = end_offsets(bootstrap, [topic])[topic]
    if partitions is not None:
        wanted = set(partitions)
        target_end = {p: e for p, e in target_end.items() if p in wanted}
    target_end = {int(p): int(e) for p, e in target_end.items()}
    raw = OffsetTrackedTable(raw_uri)
    dead_letter = OffsetTrackedTable(dead_letter_uri)
    ordered = sorted(target_end)
    start = raw.next_offsets(topic, ordered)
    already_dead = dead_letter.next_offsets(topic, ordered)
    report = IngestReport(table.name, topic, dict(start), dict(start), dict(target_end), raw_version=raw.version())
    evolved = evolved_columns(raw, table)
    cursor = dict(start)
    _ingest_rounds(spark, bootstrap, table, topic, raw, dead_letter, cursor, target_end, already_dead, evolved,
                   max_batch_messages, report, log, after_commit)
    if report.batches:
        held = OffsetTrackedTable(raw_uri).next_offsets(topic, ordered)
        if held != report.committed_offsets:
            raise LostEventsError(f"{topic}: the raw table holds offsets {held} after the run, expected "
                                  f"{report.committed_offsets}")
    report.seconds = time.monotonic() - started
    return report


def _ingest_rounds(spark: SparkSession, bootstrap: str, table: SourceTable, topic: str, raw: OffsetTrackedTable,
                   dead_letter: OffsetTrackedTable, cursor: dict[int, int], target_end: dict[int, int],
                   already_dead: dict[int, int], evolved: dict[str, pa.DataType], max_batch_messages: int,
                   report: IngestReport, log: Callable[[str], None],
                   after_commit: Callable[[SparkCommit], None]) -> None:
    while ranges := _next_ranges(cursor, target_end, max_batch_messages):
        ingested_at = datetime.now(UTC)
        decoded, summary, found = _decode_round(spark, bootstrap, table, topic, ranges, evolved, ingested_at,
                                                already_dead)
        if found:  # image columns the raw table does not have yet: decode the round again with them
            decoded.unpersist()
            evolved.update(found)
            report.new_columns.update({k: str(v) for k, v in found.items()})
            log(f"{topic}: new columns {sorted(found)}: the round is decoded again with them")
            decoded, summary, found = _decode_round(spark, bootstrap, table, topic, ranges, evolved, ingested_at,
                                                    already_dead)
            if found:
                decoded.unpersist()
                raise RuntimeError(f"{topic}: columns {sorted(found)} appeared on a second decode of one range")
        try:
            _check_counts(topic, ranges, summary)
            for p, (_, end) in sorted(ranges.items()):
                _commit_partition(decoded, summary[p], raw, dead_letter, table, topic, p, end, cursor[p],
                                  already_dead.get(p, 0), evolved, report, log, after_commit)
                cursor[p] = end
        finally:
            decoded.unpersist()


def _next_ranges(cursor: dict[int, int], end: dict[int, int], max_messages: int) -> dict[int, tuple[int, int]]:
    return {p: (cursor[p], min(e, cursor[p] + max_messages)) for p, e in sorted(end.items()) if e > cursor[p]}


# --- one round: read exactly the range, decode on the executors ---------------------------------------------

@dataclass
class _PartitionSummary:
    consumed: int = 0
    landed: int = 0
    dead_lettered: int = 0
    new_dead_letters: int = 0  # at or past the dead-letter table's committed offset


def _output_schema(table: SourceTable, evolved: dict[str, pa.DataType]) -> pa.Schema:
    """What the decoding step emits per message (a raw row or a dead letter) and per decoded batch (a summary)."""
    row = pa.struct([f.with_type(UTC_MICROS) if f.name == "kafka_timestamp" else f
                     for f in raw_arrow_schema(table, evolved)])
    return pa.schema([
        pa.field("kind", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("row", row),
        pa.field("dead", pa.struct(list(DEAD_LETTER_SCHEMA))),
        pa.field("consumed", pa.int64()),
        pa.field("new_columns", pa.binary()),  # a serialized Arrow schema of image columns beyond `evolved`
    ])


def _read_range(spark: SparkSession, bootstrap: str, topic: str, ranges: dict[int, tuple[int, int]]) -> DataFrame:
    """Exactly the offsets [start, end) of each partition in `ranges` (Spark's Kafka source, batch mode: no
    consumer group, nothing committed to Kafka)."""
    return (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("assign", json.dumps({topic: sorted(ranges)}))
        .option("startingOffsets", json.dumps({topic: {str(p): s for p, (s, _) in ranges.items()}}))
        .option("endingOffsets", json.dumps({topic: {str(p): e for p, (_, e) in ranges.items()}}))
        .option("failOnDataLoss", "true")
        .load()
        .select("key", "value", "partition", "offset", "timestamp")
    )


def _decoder(table: SourceTable, topic: str, evolved: dict[str, pa.DataType], ingested_at: datetime,
             out: pa.Schema) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function `mapInArrow` runs on each task's Arrow batches (pickled to the executors' Python workers)."""

    def decode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from cardo_pipeline.cdc.decode import KafkaRecord, decode_batch

        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            partitions = batch.column("partition").to_pylist()
            offsets = batch.column("offset").to_pylist()
            stamps = batch.column("timestamp").cast(pa.int64()).to_pylist()  # microseconds since the epoch
            records = [
                KafkaRecord(topic, p, o, k, v, -1 if ts is None else ts // 1000)
                for p, o, k, v, ts in zip(partitions, offsets, batch.column("key").to_pylist(),
                                          batch.column("value").to_pylist(), stamps, strict=True)
            ]
            decoded = decode_batch(records, table, ingested_at=ingested_at, evolved_columns=evolved)
            if decoded.rows.num_rows + decoded.dead_letters.num_rows != n:
                raise LostEventsError(f"{topic}: consumed {n} but landed {decoded.rows.num_rows} and dead-lettered "
                                      f"{decoded.dead_letters.num_rows}; nothing of this range was committed")
            found = {k: v for k, v in decoded.new_columns.items() if k not in evolved}
            yield from _emit(out, decoded.rows, decoded.dead_letters, partitions[0], n, found)

    return decode


def _emit(out: pa.Schema, rows: pa.Table, dead: pa.Table, partition: int, consumed: int,
          found: dict[str, pa.DataType]) -> Iterator[pa.RecordBatch]:
    row_type: pa.StructType = out.field("row").type
    dead_type: pa.StructType = out.field("dead").type
    parts = []
    if rows.num_rows:
        parts.append(_part(out, _ROW, rows["partition"], rows["offset"], row=_as_struct(rows, row_type)))
    if dead.num_rows:
        parts.append(_part(out, _DEAD, dead["partition"], dead["offset"], dead=_as_struct(dead, dead_type)))
    summary = pa.schema([pa.field(k, v) for k, v in found.items()]).serialize().to_pybytes() if found else None
    parts.append(_part(out, _BATCH, pa.array([partition], pa.int32()), pa.array([0], pa.int64()),
                       consumed=pa.array([consumed], pa.int64()), new_columns=pa.array([summary], pa.binary())))
    yield from pa.concat_tables(parts).combine_chunks().to_batches()


def _part(out: pa.Schema, kind: str, partitions, offsets, **columns) -> pa.Table:
    n = len(offsets)
    arrays = {"kind": pa.array([kind] * n, pa.string()), "partition": partitions, "offset": offsets}
    return pa.table({f.name: arrays.get(f.name, columns.get(f.name)) if f.name in arrays or f.name in columns
                     else pa.nulls(n, f.type) for f in out}, schema=out)


def _as_struct(rows: pa.Table, struct_type: pa.StructType) -> pa.StructArray:
    """The table's columns as one struct column of `struct_type` (image columns beyond it left out, wider types
    cast: the Kafka timestamp's milliseconds become Spark's microseconds)."""
    return pa.StructArray.from_arrays(
        [_conform(rows.column(f.name).combine_chunks(), f.type) for f in struct_type], fields=list(struct_type)
    )


def _conform(array: pa.Array, data_type: pa.DataType) -> pa.Array:
    if pa.types.is_struct(data_type) and array.type != data_type:
        children = [_conform(array.field(f.name), f.type) if array.type.get_field_index(f.name) >= 0
                    else pa.nulls(len(array), f.type) for f in data_type]
        return pa.StructArray.from_arrays(children, fields=list(data_type), mask=array.is_null())
    return array if array.type == data_type else array.cast(data_type)


def _decode_round(spark: SparkSession, bootstrap: str, table: SourceTable, topic: str,
                  ranges: dict[int, tuple[int, int]], evolved: dict[str, pa.DataType], ingested_at: datetime,
                  already_dead: dict[int, int],
                  ) -> tuple[DataFrame, dict[int, _PartitionSummary], dict[str, pa.DataType]]:
    """Read and decode one round (persisted); its counts per partition and the image columns new to it."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    out = _output_schema(table, evolved)
    decoded = (_read_range(spark, bootstrap, topic, ranges)
               .mapInArrow(_decoder(table, topic, dict(evolved), ingested_at, out), from_arrow_schema(out))
               .persist(StorageLevel.MEMORY_AND_DISK))
    summary = {p: _PartitionSummary() for p in ranges}
    try:
        kind, offset = F.col("kind"), F.col("offset")
        new_dead = (kind == _DEAD) & (offset >= _dead_letter_floor(already_dead))
        rows = (decoded.groupBy("partition")
                .agg(F.sum(F.when(kind == _BATCH, F.col("consumed")).otherwise(0)).alias("consumed"),
                     F.sum((kind == _ROW).cast("long")).alias("landed"),
                     F.sum((kind == _DEAD).cast("long")).alias("dead"),
                     F.sum(new_dead.cast("long")).alias("new_dead"),
                     F.collect_set("new_columns").alias("new_columns"))
                .collect())
        for r in rows:
            summary[r["partition"]] = _PartitionSummary(int(r["consumed"] or 0), int(r["landed"] or 0),
                                                        int(r["dead"] or 0), int(r["new_dead"] or 0))
        found: dict[str, pa.DataType] = {}
        for r in rows:
            for serialized in r["new_columns"]:
                for f in pa.ipc.read_schema(pa.py_buffer(serialized)):
                    found[f.name] = wider_type(found[f.name], f.type) if f.name in found else f.type
    except BaseException:
        decoded.unpersist()
        raise
    return decoded, summary, found


def _dead_letter_floor(already_dead: dict[int, int]):
    """Per row, the dead-letter table's committed offset of the row's partition: dead letters below it are held."""
    from pyspark.sql import functions as F

    expression = F.lit(0)
    for p, floor in sorted(already_dead.items()):
        if floor:
            expression = F.when(F.col("partition") == p, F.lit(floor)).otherwise(expression)
    return expression


def _check_counts(topic: str, ranges: dict[int, tuple[int, int]], summary: dict[int, _PartitionSummary]) -> None:
    for p, (start, end) in sorted(ranges.items()):
        s = summary[p]
        if s.consumed != s.landed + s.dead_lettered:
            raise LostEventsError(f"{topic}: partition {p}, offsets [{start}, {end}): consumed {s.consumed} but "
                                  f"landed {s.landed} and dead-lettered {s.dead_lettered}; nothing of it committed")
        if s.consumed > end - start:
            raise LostEventsError(f"{topic}: partition {p}: read {s.consumed} messages from [{start}, {end})")


# --- one partition's commits ------------------------------------------------------------------------------

def _commit_partition(decoded: DataFrame, counts: _PartitionSummary, raw: OffsetTrackedTable,
                      dead_letter: OffsetTrackedTable, table: SourceTable, topic: str, partition: int, end: int,
                      expected_start: int, dead_floor: int, evolved: dict[str, pa.DataType], report: IngestReport,
                      log: Callable[[str], None], after_commit: Callable[[SparkCommit], None]) -> None:
    """Dead letters not held yet, then the raw rows: each a commit that moves the partition's app transaction to
    `end` in that table."""
    from pyspark.sql import functions as F

    app_id = offsets_app_id(topic, partition)
    metadata = json.dumps({"cardo.table": table.name, "cardo.kafka_offsets": {topic: {str(partition): end}},
                           "cardo.batch_messages": counts.consumed})
    mine = F.col("partition") == partition
    if counts.new_dead_letters:
        dead_letter.ensure_exists(DEAD_LETTER_SCHEMA)
        rows = decoded.where(mine & (F.col("kind") == _DEAD) & (F.col("offset") >= dead_floor)).select("dead.*")
        report.dead_letter_version = _append(rows, dead_letter.uri, app_id, end, metadata, merge_schema=False)
        after_commit(SparkCommit("dead_letter", partition, end, report.dead_letter_version, counts.new_dead_letters))

    raw.ensure_exists(raw_arrow_schema(table, evolved))  # by delta-rs: its schema, properties and protocol
    held = _committed_offset(raw.uri, app_id)
    if held != expected_start:
        raise ConcurrentIngestError(f"{topic}: partition {partition} was read from offset {expected_start}, but the "
                                    f"raw table has moved to {held} since: another run ingests it; nothing committed")
    rows = decoded.where(mine & (F.col("kind") == _ROW)).select("row.*")
    report.raw_version = _append(rows, raw.uri, app_id, end, metadata, merge_schema=bool(evolved))
    report.committed_offsets = {**report.committed_offsets, partition: end}
    report.consumed += counts.consumed
    report.landed += counts.landed
    report.dead_lettered += counts.dead_lettered
    report.batches += 1
    log(f"{topic}: partition {partition} up to offset {end}: {counts.consumed} consumed, {counts.dead_lettered} "
        f"dead-lettered, raw version {report.raw_version}")
    after_commit(SparkCommit("raw", partition, end, report.raw_version, counts.landed))


def _append(rows: DataFrame, uri: str, app_id: str, next_offset: int, metadata: str, *, merge_schema: bool) -> int:
    """One Delta commit by Spark's writer: the rows and the app transaction (app_id, next_offset); its version."""
    writer = (rows.write.format("delta").mode("append")
              .option("txnAppId", app_id).option("txnVersion", str(next_offset))
              .option("userMetadata", metadata))
    if merge_schema:
        writer = writer.option("mergeSchema", "true")  # image columns added at the source, as the local path does
    writer.save(uri)
    table = load_table(uri)
    assert table is not None
    committed = table.transaction_version(app_id) or 0
    if committed != next_offset:
        raise ConcurrentIngestError(f"{uri}: {app_id} is at {committed} after committing {next_offset}")
    return table.version()


def _committed_offset(uri: str, app_id: str) -> int:
    table = load_table(uri)
    return 0 if table is None else table.transaction_version(app_id) or 0
