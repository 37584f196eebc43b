"""Audits of the raw layer that asset checks, the demo summary and tests report: every offset exactly once,
no incompatible schema change, dead letters per topic. No Dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from cardo_pipeline.ingest.delta_log import OffsetTrackedTable, load_table

INCOMPATIBLE_PREFIX = "incompatible type change"


@dataclass
class OffsetAudit:
    """How the (partition, offset) pairs held in raw and dead-letter tables cover the committed ranges."""

    checked: int = 0
    duplicates: int = 0
    missing: int = 0
    samples: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.duplicates == 0 and self.missing == 0


def audit_offsets(
    offsets: pa.Table, committed: dict[int, int], first_available: dict[int, int] | None = None
) -> OffsetAudit:
    """`offsets` has int columns partition and offset (raw rows plus dead letters of one topic).

    Every offset in [first available, committed) must appear exactly once; offsets at or past `committed` would
    be rows without their offsets and count as duplicates-in-waiting, so they are reported as duplicates too.
    """
    audit = OffsetAudit(checked=offsets.num_rows)
    first_available = first_available or {}
    for partition, next_offset in sorted(committed.items()):
        mask = pc.equal(offsets["partition"], partition)
        values = pc.sort_indices(offsets.filter(mask)["offset"])
        held = offsets.filter(mask)["offset"].take(values).to_numpy()
        start = first_available.get(partition, 0)
        in_range = held[(held >= start) & (held < next_offset)]
        beyond = int((held >= next_offset).sum())
        distinct = len(set(in_range.tolist()))
        dupes = len(in_range) - distinct + beyond
        missing = (next_offset - start) - distinct
        audit.duplicates += dupes
        audit.missing += missing
        if dupes or missing:
            audit.samples.append(
                f"partition {partition}: {dupes} duplicated, {missing} missing of [{start}, {next_offset})"
            )
    return audit


def incompatible_changes(dead_letters: pa.Table, topic: str) -> pa.Table:
    """Dead letters of `topic` caused by a type change that cannot be widened."""
    if dead_letters.num_rows == 0:
        return dead_letters
    mask = pc.and_(
        pc.equal(dead_letters["topic"], topic), pc.starts_with(dead_letters["error"], INCOMPATIBLE_PREFIX)
    )
    return dead_letters.filter(mask)


def read_columns(uri: str, columns: list[str], topic: str | None = None) -> pa.Table | None:
    """Some columns of a Delta table, optionally only the rows of one topic; None when there is no table."""
    table = load_table(uri)
    if table is None:
        return None
    expression = None if topic is None else ds.field("topic") == topic
    return table.to_pyarrow_dataset().to_table(columns=columns, filter=expression)


@dataclass
class TopicAudit:
    audit: OffsetAudit
    committed: dict[int, int]
    held: int  # raw rows plus dead letters of the topic


def audit_topic_offsets(raw_uri: str, dead_letter_uri: str, topic: str) -> TopicAudit | None:
    """Audit one topic's offsets across its raw table and the dead-letter table; None when raw does not exist."""
    raw = read_columns(raw_uri, ["partition", "offset"])
    if raw is None:
        return None
    dead = read_columns(dead_letter_uri, ["partition", "offset"], topic)
    held = pa.concat_tables([raw, dead.cast(raw.schema)]) if dead is not None else raw
    partitions = sorted(set(held["partition"].to_pylist()))
    committed = OffsetTrackedTable(raw_uri).next_offsets(topic, partitions)
    return TopicAudit(audit_offsets(held, committed), committed, held.num_rows)


def dead_letters_by_topic(dead_letter_uri: str) -> dict[str, int]:
    """Dead-lettered message count per topic (or replayed file)."""
    topics = read_columns(dead_letter_uri, ["topic"])
    if topics is None:
        return {}
    return {t["values"]: t["counts"] for t in topics["topic"].value_counts().to_pylist()}


def kafka_lag(raw_uri: str, topic: str, end_offsets: dict[int, int]) -> dict[int, int]:
    """Messages per partition that Kafka holds and raw has not committed yet (end offset - committed offset)."""
    committed = OffsetTrackedTable(raw_uri).next_offsets(topic, sorted(end_offsets))
    return {p: max(0, end - committed[p]) for p, end in sorted(end_offsets.items())}


def dead_letters_between(dead_letter_uri: str, topic: str, ranges: dict[int, tuple[int, int]]) -> pa.Table:
    """The dead letters of `topic` whose offsets fall in [start, end) of their partition's range."""
    dead = read_columns(dead_letter_uri, ["partition", "offset", "error"], topic=topic)
    if dead is None or not ranges:
        return pa.table({"partition": pa.array([], pa.int32()), "offset": pa.array([], pa.int64()),
                         "error": pa.array([], pa.string())})
    mask = None
    for partition, (start, end) in ranges.items():
        inside = pc.and_(pc.equal(dead["partition"], partition),
                         pc.and_(pc.greater_equal(dead["offset"], start), pc.less(dead["offset"], end)))
        mask = inside if mask is None else pc.or_(mask, inside)
    return dead.filter(mask).sort_by([("partition", "ascending"), ("offset", "ascending")])
