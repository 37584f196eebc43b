"""Checks that the curated tables agree with each other (used by the blocking asset check)."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from cardo_pipeline.curate.apply import LSN, OFFSET
from cardo_pipeline.curate.key_diff import diff_by_key
from cardo_pipeline.curate.merge_on_read import read_live
from cardo_pipeline.curate.storage import CuratedLocations
from cardo_pipeline.tables import SourceTable


@dataclass
class Agreement:
    compared: int = 0
    only_in_current: int = 0
    only_in_history: int = 0
    differing: int = 0
    duplicate_keys: int = 0
    samples: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (self.only_in_current or self.only_in_history or self.differing or self.duplicate_keys)


def _read(uri: str) -> pl.DataFrame | None:
    return read_live(uri)


def compare_current_with_history(table: SourceTable, locations: CuratedLocations, sample_size: int = 5
                                 ) -> Agreement:
    """The current table must be exactly the history's current, not deleted rows, one row per key."""
    current, history = _read(locations.current), _read(locations.history)
    if current is None or history is None:
        return Agreement()
    key, names = list(table.primary_key), [c.name for c in table.columns]
    expected = history.filter(pl.col("is_current") & ~pl.col("is_deleted")).select(
        *names, pl.col("valid_from_lsn").alias(LSN), pl.col("valid_from_offset").alias(OFFSET))
    actual = current.select(*names, LSN, OFFSET)
    duplicates = actual.group_by(key).len().filter(pl.col("len") > 1)
    diff = diff_by_key(actual, expected, key)
    return Agreement(
        compared=actual.height, only_in_current=diff.only_left.height, only_in_history=diff.only_right.height,
        differing=diff.differing.height, duplicate_keys=duplicates.height,
        samples=[{"problem": "duplicate key", **row} for row in duplicates.select(key).head(sample_size).to_dicts()]
        + diff.samples("only in current", "only in history", "values differ", sample_size),
    )
