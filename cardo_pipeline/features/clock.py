"""When each version of a curated row became known: the source's own clock, read from the SCD2 histories.

Point in time needs a knowledge time per version. Debezium's commit time is the wall clock of the capture, which is
wrong for a re-snapshot or a replay (and, for the simulator, compresses two years into seconds). The servicing
tables stamp every change with `updated_at`, so the clock is that stamp, made monotone along the source's commit
order (the LSN, shared by every table of the database): `known_at` of a version is the latest `updated_at` stamped
at or before its LSN. A backdated stamp therefore cannot move a change into the past, and a delete, which carries no
stamp of its own (its image is the row before), takes the first stamp at or after it, never an earlier one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

import polars as pl

LSN, OFFSET, DELETED, STAMP = "valid_from_lsn", "valid_from_offset", "is_deleted", "updated_at"
KNOWN_AT = "known_at"
CLOCK_DTYPE = pl.Datetime("us", "UTC")


def source_clock(versions: Iterable[pl.LazyFrame]) -> pl.DataFrame:
    """(LSN, clock): the running maximum of `updated_at` over every stamped version of every table, in LSN order."""
    stamps = pl.concat([v.filter(~pl.col(DELETED)).select(LSN, pl.col(STAMP).cast(CLOCK_DTYPE))
                        for v in versions])
    return (stamps.group_by(LSN).agg(pl.col(STAMP).max()).sort(LSN)
            .with_columns(pl.col(STAMP).cum_max().alias(KNOWN_AT)).select(LSN, KNOWN_AT).collect())


def with_known_at(versions: pl.LazyFrame, clock: pl.DataFrame) -> pl.LazyFrame:
    """`versions` with `known_at`: the clock at or before an upsert's LSN, the clock at or after a delete's."""
    lazy_clock = clock.lazy()
    joined = (versions.sort(LSN, maintain_order=True)
              .join_asof(lazy_clock, on=LSN, strategy="backward")
              .join_asof(lazy_clock.rename({KNOWN_AT: "_clock_after"}), on=LSN, strategy="forward"))
    return joined.with_columns(
        pl.when(pl.col(DELETED)).then(pl.coalesce("_clock_after", KNOWN_AT)).otherwise(pl.col(KNOWN_AT))
        .alias(KNOWN_AT)).drop("_clock_after")


def cutoff_end(cutoff: date) -> datetime:
    """A cutoff date is a whole day: what was known before the next midnight (UTC) counts."""
    return datetime.combine(cutoff + timedelta(days=1), time(), tzinfo=UTC)


def as_of(versions: pl.LazyFrame, key: str | list[str], end: datetime) -> pl.LazyFrame:
    """Each key's row as known before `end` (the last version known by then), without the deleted ones."""
    keys = [key] if isinstance(key, str) else key
    return (versions.filter(pl.col(KNOWN_AT) < end).sort([*keys, LSN, OFFSET])
            .unique(subset=keys, keep="last", maintain_order=True).filter(~pl.col(DELETED)))
