"""Apply-changes (ARCHITECTURE section 5), in memory: raw CDC rows -> a change log, current state, SCD2 history.

What belongs here: the semantics, as pure functions over Arrow tables, with no storage and no Dagster. The
storage layer (Delta, by bucket of touched keys) calls `fold_changes` with the log rows of the keys a batch
touches and writes back what it returns.

The log keeps one row per event that matters (upserts and deletes, deduplicated by sequence), with values
resolved and the original unchanged-TOAST marks kept. Everything else follows from the log in sequence order,
whatever the arrival order:
- the current state of a key is its last event, if that is an upsert newer than the last truncate;
- a version's valid_to is the sequence of the key's next event, or of the first truncate after it;
- a column an update left TOAST-unchanged takes the value of the key's previous event when that is a live
  version (no delete or truncate in between), else null; so a late event that lands before an update is seen
  by the next resolution, which runs on every key a batch touches.
A delete stays in the log as the key's tombstone, so a late, older insert cannot bring the row back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

from cardo_pipeline.cdc.arrow_types import arrow_type_for_column
from cardo_pipeline.tables import SourceTable

LSN, OFFSET = "_cardo_lsn", "_cardo_offset"  # the sequence: source LSN, then the event's position (Kafka offset)
OP = "_cardo_op"  # "upsert" or "delete"
UNCHANGED_TOAST = "_cardo_unchanged_toast"  # the event's columns that were TOAST-unchanged (resolved from before)
SOURCE_TS = "_cardo_source_ts"
UPSERT_OPS = ("c", "u", "r")  # insert, update, snapshot read
SEQUENCE = [LSN, OFFSET]
VALID_FROM = ["valid_from_lsn", "valid_from_offset"]  # a history row's sequence: with the key, its identity
# On a log row (optional column): its values stand resolved, because no earlier row of its key is in the log
# (the storage layer folds a key's last stored row alone when every new event follows it)
RESOLVED = "_cardo_resolved"


def log_schema(table: SourceTable) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, arrow_type_for_column(c)) for c in table.columns]
        + [pa.field(LSN, pa.int64(), False), pa.field(OFFSET, pa.int64(), False), pa.field(OP, pa.string(), False),
           pa.field(UNCHANGED_TOAST, pa.list_(pa.string())), pa.field(SOURCE_TS, pa.timestamp("us", "UTC"))]
    )


RAW_COLUMNS = ["op", "before", "after", "unchanged_toast", "source_lsn", "offset", "source_ts"]  # what the apply reads


def changes_from_raw(raw: pa.Table | pl.DataFrame, table: SourceTable) -> tuple[pl.DataFrame, list[tuple[int, int]]]:
    """The batch's upserts and deletes in the log's layout (values not yet resolved), and its truncates'
    sequences. Kafka tombstones carry nothing beyond their delete and are dropped."""
    frame = raw.select(RAW_COLUMNS) if isinstance(raw, pl.DataFrame) else pl.from_arrow(raw.select(RAW_COLUMNS))
    assert isinstance(frame, pl.DataFrame)
    truncates = [(lsn, offset) for lsn, offset in frame.filter(pl.col("op") == "t").select(
        "source_lsn", "offset").iter_rows()]
    events = frame.filter(pl.col("op").is_in([*UPSERT_OPS, "d"]))
    is_delete = pl.col("op") == "d"
    key_columns = set(table.primary_key)
    columns = [
        pl.when(is_delete).then(pl.col("before").struct.field(c.name) if c.name in key_columns else None)
        .otherwise(pl.col("after").struct.field(c.name)).alias(c.name)
        for c in table.columns
    ]
    changes = events.select(
        *columns,
        pl.col("source_lsn").alias(LSN), pl.col("offset").alias(OFFSET),
        pl.when(is_delete).then(pl.lit("delete")).otherwise(pl.lit("upsert")).alias(OP),
        pl.when(is_delete).then(None).otherwise(pl.col("unchanged_toast")).alias(UNCHANGED_TOAST),
        pl.col("source_ts").alias(SOURCE_TS),
    )
    return _typed(changes, table), truncates


def _typed(frame: pl.DataFrame, table: SourceTable) -> pl.DataFrame:
    """The frame in the log's types (cast in polars: a trip through Arrow costs a copy of every string)."""
    types = _log_types(table)
    return frame.select(pl.col(name) if frame.schema[name] == dtype else pl.col(name).cast(dtype)
                        for name, dtype in types.items())


@functools.cache
def _log_types(table: SourceTable) -> pl.Schema:
    return pl.from_arrow(log_schema(table).empty_table()).schema  # type: ignore[union-attr]


def _after_truncate(truncates: list[tuple[int, int]]) -> pl.Expr:
    """The number of truncates at or before each row's sequence (rows in different counts are separated by one)."""
    count = pl.lit(0, pl.UInt32)
    for lsn, offset in truncates:
        count = count + ((pl.col(LSN) > lsn) | ((pl.col(LSN) == lsn) & (pl.col(OFFSET) >= offset))).cast(pl.UInt32)
    return count


def fold_changes(log: pl.DataFrame, changes: pl.DataFrame, table: SourceTable,
                 truncates: list[tuple[int, int]]) -> pl.DataFrame:
    """The log rows of the keys in `log` and `changes` after adding the changes: deduplicated by sequence,
    sorted by key and sequence, TOAST-unchanged columns resolved."""
    key = list(table.primary_key)
    # a stable sort keeps the log's row first among a sequence's rows: it wins a duplicate
    merged = pl.concat([log, changes], how="diagonal" if RESOLVED in log.columns else "vertical").sort(
        [*key, *SEQUENCE], maintain_order=True)
    merged = merged.filter(~_same_as_previous([*key, *SEQUENCE]))
    if not table.toasted or merged.is_empty():
        return merged.drop(RESOLVED, strict=False)
    # A live stretch of a key: from an upsert after a delete or truncate up to the next one. Within a stretch a
    # TOAST-unchanged column takes the last value an event provided. The rows are sorted by key and sequence, so
    # stretches are runs of rows (window functions over the key cost a hundred times more)
    starts = ~_same_key_as(1, key) | (pl.col(OP) == "delete")
    if truncates:
        truncated = _after_truncate(truncates)
        starts = starts | (truncated != truncated.shift(1)).fill_null(True)
    merged = merged.with_columns(starts.alias("_starts"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"))
    resolved = []
    for column in table.toasted:
        left_unchanged = (pl.col(OP) == "upsert") & pl.col(UNCHANGED_TOAST).list.contains(column).fill_null(False)
        if RESOLVED in merged.columns:
            left_unchanged = left_unchanged & ~pl.col(RESOLVED).fill_null(False)
        # the last providing row at or before each row; -1 marks a stretch that starts without one
        provider = (pl.when(~left_unchanged).then(pl.col("_row")).when(pl.col("_starts")).then(pl.lit(-1))
                    .otherwise(None).forward_fill())
        resolved.append(pl.col(column).gather(pl.when(provider >= 0).then(provider)).alias(column))
    return merged.with_columns(resolved).drop("_starts", "_row", RESOLVED, strict=False)


def _same_as_previous(columns: list[str]) -> pl.Expr:
    """Whether the previous row has the same values in `columns` (null equal to null)."""
    return pl.all_horizontal(pl.col(name).eq_missing(pl.col(name).shift(1)) for name in columns) & (
        pl.int_range(pl.len()) > 0)


def first_of_each_key(frame: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """The first row of each key, of rows sorted by key (a group_by costs several times more)."""
    return frame.filter(~_same_key_as(1, key))


def last_of_each_key(frame: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """The last row of each key, of rows sorted by key."""
    return frame.filter(~_same_key_as(-1, key))


def _same_key_as(step: int, key: list[str]) -> pl.Expr:
    """Whether the row `step` rows away (-1: the next, 1: the previous) has the same key (rows sorted by key)."""
    return pl.all_horizontal(pl.col(name).shift(step) == pl.col(name) for name in key).fill_null(False)


@dataclass(frozen=True)
class CuratedTables:
    """The in-memory state of one table: its change log and the sequences of the truncates seen."""

    log: pl.DataFrame
    truncates: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def empty(cls, table: SourceTable) -> CuratedTables:
        return cls(pl.from_arrow(log_schema(table).empty_table()))  # type: ignore[arg-type]


def apply_changes(state: CuratedTables, raw: pa.Table, table: SourceTable) -> CuratedTables:
    """Apply one raw batch; the result does not depend on arrival order, and re-applying changes nothing."""
    changes, new_truncates = changes_from_raw(raw, table)
    truncates = sorted(set(state.truncates) | set(new_truncates))
    key = list(table.primary_key)
    if truncates != state.truncates:  # every key's stretches may change
        return CuratedTables(fold_changes(state.log, changes, table, truncates), truncates)
    touched = changes.select(key).unique()
    untouched = state.log.join(touched, on=key, how="anti")
    mine = state.log.join(touched, on=key, how="semi")
    folded = fold_changes(mine, changes, table, truncates)
    return CuratedTables(pl.concat([untouched, folded]).sort([*key, *SEQUENCE]), truncates)


def current_frame(log: pl.DataFrame, truncates: list[tuple[int, int]], table: SourceTable) -> pl.DataFrame:
    """Live rows of the keys in `log` (sorted by key and sequence): each key's last event, when it is an upsert
    after the last truncate."""
    key = list(table.primary_key)
    last = last_of_each_key(log, key)
    if truncates:
        lsn, offset = truncates[-1]
        last = last.filter((pl.col(LSN) > lsn) | ((pl.col(LSN) == lsn) & (pl.col(OFFSET) > offset)))
    return last.filter(pl.col(OP) == "upsert")


HISTORY_COLUMNS = [*VALID_FROM, "valid_to_lsn", "valid_to_offset", "valid_from_ts",
                   "valid_to_ts", "is_current", "is_deleted"]


def history_frame(log: pl.DataFrame, truncates: list[tuple[int, int]], table: SourceTable) -> pl.DataFrame:
    """Every event of the keys in `log` (sorted by key and sequence) as SCD2 rows: valid_from, valid_to (the
    key's next event or the first truncate after it, whichever is first), is_current; a delete is a row of its
    own with is_deleted (its key columns only), as dbt snapshots record hard deletes. The unchanged-TOAST marks
    are kept, so the rows can be read back as the change log."""
    next_is_same_key = _same_key_as(-1, list(table.primary_key))
    log = log.with_columns(
        pl.when(next_is_same_key).then(pl.col(LSN).shift(-1)).alias("valid_to_lsn"),
        pl.when(next_is_same_key).then(pl.col(OFFSET).shift(-1)).alias("valid_to_offset"),
        pl.when(next_is_same_key).then(pl.col(SOURCE_TS).shift(-1)).alias("valid_to_ts"),
    )
    for lsn, offset in reversed(truncates):  # the first truncate after valid_from ends it when earlier
        after_from = (pl.col(LSN) < lsn) | ((pl.col(LSN) == lsn) & (pl.col(OFFSET) < offset))
        before_to = pl.col("valid_to_lsn").is_null() | (pl.col("valid_to_lsn") > lsn) | (
            (pl.col("valid_to_lsn") == lsn) & (pl.col("valid_to_offset") > offset))
        ends = after_from & before_to
        log = log.with_columns(
            pl.when(ends).then(pl.lit(lsn, pl.Int64)).otherwise(pl.col("valid_to_lsn")).alias("valid_to_lsn"),
            pl.when(ends).then(pl.lit(offset, pl.Int64)).otherwise(pl.col("valid_to_offset")).alias("valid_to_offset"),
            pl.when(ends).then(None).otherwise(pl.col("valid_to_ts")).alias("valid_to_ts"),
        )
    return log.select(
        *[c.name for c in table.columns],
        pl.col(LSN).alias("valid_from_lsn"), pl.col(OFFSET).alias("valid_from_offset"),
        "valid_to_lsn", "valid_to_offset", pl.col(SOURCE_TS).alias("valid_from_ts"), "valid_to_ts",
        pl.col("valid_to_lsn").is_null().alias("is_current"), (pl.col(OP) == "delete").alias("is_deleted"),
        UNCHANGED_TOAST,
    )


def marks_as_text(marks: pl.Expr) -> pl.Expr:
    """Unchanged-TOAST marks (a list of column names) as a JSON array, null for none: how the stored history
    keeps them (every batch reads the marks of its keys' last versions, and a text column decodes several times
    faster than a list)."""
    prefix = len(f'{{"{UNCHANGED_TOAST}":')
    text = pl.struct(marks.alias(UNCHANGED_TOAST)).struct.json_encode().str.slice(prefix).str.strip_suffix("}")
    return pl.when(marks.list.len() > 0).then(text)


def log_from_history(history: pl.DataFrame, table: SourceTable) -> pl.DataFrame:
    """The change log back from SCD2 rows (`history_frame`'s layout, the marks as a list or as stored): what the
    next batch folds into (with RESOLVED, when the rows have it)."""
    marks = pl.col(UNCHANGED_TOAST)
    if history.schema[UNCHANGED_TOAST] == pl.String:
        marks = marks.str.json_decode(pl.List(pl.String))
    log = _typed(history.select(
        *[c.name for c in table.columns],
        pl.col("valid_from_lsn").alias(LSN), pl.col("valid_from_offset").alias(OFFSET),
        pl.when(pl.col("is_deleted")).then(pl.lit("delete")).otherwise(pl.lit("upsert")).alias(OP),
        marks.alias(UNCHANGED_TOAST), pl.col("valid_from_ts").alias(SOURCE_TS),
    ), table)
    return log.with_columns(history[RESOLVED]) if RESOLVED in history.columns else log


def current_state(state: CuratedTables, table: SourceTable) -> pl.DataFrame:
    return current_frame(state.log.sort([*table.primary_key, *SEQUENCE]), state.truncates, table)


def history(state: CuratedTables, table: SourceTable) -> pl.DataFrame:
    """SCD2 versions (deletes left out)."""
    frame = history_frame(state.log.sort([*table.primary_key, *SEQUENCE]), state.truncates, table)
    return frame.filter(~pl.col("is_deleted")).drop("is_deleted", UNCHANGED_TOAST)


def current_rows(state: CuratedTables, table: SourceTable) -> list[dict]:
    names = [c.name for c in table.columns]
    return current_state(state, table).select(names).sort(list(table.primary_key)).to_dicts()


def history_rows(state: CuratedTables, table: SourceTable) -> list[dict]:
    names = [c.name for c in table.columns]
    columns = [*names, *VALID_FROM, "valid_to_lsn", "valid_to_offset", "is_current"]
    return history(state, table).select(columns).sort(
        [*table.primary_key, *VALID_FROM]).to_dicts()
