"""Curated tables in Delta, applied incrementally from a raw table (ARCHITECTURE section 5; semantics in `apply`).

Per source table:
- `curated/<table>`: the current state, one row per live key, with the sequence of its last event
  (`_cardo_lsn`, `_cardo_offset`) and its source commit time (`_cardo_source_ts`);
- `curated/<table>_history`: every event as an SCD2 row (`apply.history_frame`): versions with valid_from /
  valid_to / is_current, deletes as rows with is_deleted. It is also the change log the next batch folds into,
  so the delete rows are the tombstones that keep late events from bringing a row back;
- `curated/_truncates/<table>`: the sequences of the truncates seen (rare; every later batch needs them).

A batch is a run of raw versions (read through the raw change data feed). Its changes are folded with the
history rows of the keys it touches; only rows that differ are merged, each table in one commit that also
records the last raw version applied (a Delta app transaction), so a crash between the two commits is repaired
by the next run, and a batch applied twice changes nothing. Change data feed is on for both tables.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Transaction, write_deltalake

from cardo_pipeline.curate.apply import (
    HISTORY_COLUMNS,
    LSN,
    OFFSET,
    RAW_COLUMNS,
    RESOLVED,
    SEQUENCE,
    SOURCE_TS,
    UNCHANGED_TOAST,
    VALID_FROM,
    changes_from_raw,
    current_frame,
    first_of_each_key,
    fold_changes,
    history_frame,
    last_of_each_key,
    log_from_history,
    log_schema,
    marks_as_text,
)
from cardo_pipeline.curate.merge_on_read import (
    FILE,
    ROW,
    MergeOnReadTable,
    UnsupportedTableFeaturesError,
    delta_rs_unsupported_features,
    local_root,
    supports,
)
from cardo_pipeline.ingest.delta_log import load_table
from cardo_pipeline.tables import SourceTable, lake_uri

RAW_VERSION_APP_ID = "cardo/raw-version"  # the app transaction whose version is the last raw version applied
# Deletion vectors: batches mark replaced rows instead of rewriting their files (`merge_on_read`)
CURATED_CONFIGURATION = {"delta.enableChangeDataFeed": "true", "delta.enableDeletionVectors": "true"}
DEFAULT_BATCH_EVENTS = 200_000
MIN_TOMBSTONE_RETENTION = timedelta(days=7)  # a late event is still put in its place for at least this long
LIVE = "_cardo_live"
SOURCE_FILE = "__cardo_source_file"
OLD_ROW = "__cardo_old_row"  # of a changed row: the position of the row it replaces among the rows read


def current_schema(table: SourceTable) -> pa.Schema:
    log = log_schema(table)
    return pa.schema([*(log.field(c.name) for c in table.columns), log.field(LSN), log.field(OFFSET),
                      log.field(SOURCE_TS)])


def history_schema(table: SourceTable) -> pa.Schema:
    log = log_schema(table)
    types = {"valid_from_lsn": pa.int64(), "valid_from_offset": pa.int64(), "valid_to_lsn": pa.int64(),
             "valid_to_offset": pa.int64(), "valid_from_ts": log.field(SOURCE_TS).type,
             "valid_to_ts": log.field(SOURCE_TS).type, "is_current": pa.bool_(), "is_deleted": pa.bool_()}
    return pa.schema([*(log.field(c.name) for c in table.columns), *(pa.field(n, types[n]) for n in HISTORY_COLUMNS),
                      pa.field(UNCHANGED_TOAST, pa.string())])  # a JSON array (`marks_as_text`)


HEAD_COLUMNS = [*VALID_FROM, "valid_from_ts", "is_current", "is_deleted", UNCHANGED_TOAST]
TRUNCATES_SCHEMA = pa.schema([pa.field("lsn", pa.int64(), False), pa.field("offset", pa.int64(), False)])


class OutdatedTableError(RuntimeError):
    """A curated table's layout is from an earlier version: it has to be rebuilt from raw."""


@dataclass(frozen=True)
class CuratedLocations:
    raw: str
    current: str
    history: str
    truncates: str

    @classmethod
    def in_lake(cls, lake: str, table: SourceTable) -> CuratedLocations:
        layout = table.layout
        return cls(lake_uri(lake, layout.raw), lake_uri(lake, layout.curated), lake_uri(lake, layout.history),
                   lake_uri(lake, layout.truncates))


@dataclass
class ApplyReport:
    table: str
    raw_version_before: int | None
    raw_version: int | None  # the last raw version applied, after this run
    events: int = 0
    batches: int = 0
    keys_touched: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    history_rows_written: int = 0
    current_version: int | None = None
    history_version: int | None = None
    seconds: float = 0.0
    truncates: list[tuple[int, int]] = field(default_factory=list)


def _ensure(uri: str, schema: pa.Schema, configuration: dict[str, str] | None) -> DeltaTable:
    table = load_table(uri)
    if table is None:
        write_deltalake(uri, schema.empty_table(), mode="append", configuration=configuration)
        table = DeltaTable(uri)
    return table


def _lowest_applied(*tables: DeltaTable | None) -> int | None:
    versions = [None if t is None else t.transaction_version(RAW_VERSION_APP_ID) for t in tables]
    return None if None in versions else min(v for v in versions if v is not None)


def raw_increments(raw: DeltaTable, after: int | None, max_events: int) -> Iterator[tuple[pl.DataFrame, int]]:
    """The raw rows (the columns the apply uses) of the versions after `after`, in runs of whole versions of about
    `max_events` rows, each with its last version: from the files the versions added, else from the change data
    feed. A table with neither (on an object store, from before the feed was switched on) comes whole as one run:
    re-applying what was applied changes nothing."""
    latest = raw.version()
    if after is not None and after >= latest:
        return
    schema = pa.schema(raw.schema().to_arrow())
    start = 0 if after is None else after + 1
    appended = _appended_rows(raw, schema, start, latest)
    if appended is not None:
        rows, versions = appended
    else:
        try:
            feed = pa.table(raw.load_cdf(starting_version=start, ending_version=latest).read_all())
        except Exception:  # noqa: BLE001 - delta-rs raises a generic error for versions without a change feed
            yield _frame(raw.to_pyarrow_table(columns=RAW_COLUMNS).cast(_applied(schema))), latest
            return
        # raw tables are append-only: their feed is inserts (filtered for safety); text comes as string_view
        inserts = pc.equal(feed["_change_type"].cast(pa.string()), "insert")
        versions = feed["_commit_version"].to_numpy().astype(np.int64)[inserts.to_numpy(zero_copy_only=False)]
        rows = _frame(feed.filter(inserts).select(RAW_COLUMNS).cast(_applied(schema)))
    if len(versions) == 0:
        yield _frame(_applied(schema).empty_table()), latest
        return
    yield from _whole_versions(rows, versions, max_events)


def _applied(schema: pa.Schema) -> pa.Schema:
    return pa.schema([schema.field(name) for name in RAW_COLUMNS])


def _frame(rows: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _appended_rows(raw: DeltaTable, schema: pa.Schema, start: int,
                   end: int) -> tuple[pl.DataFrame, np.ndarray] | None:
    """The rows versions start..end of an append-only local table added, with their versions, read from the
    files their commits add (a tenth of the time of delta-rs's change data feed, which starts a query engine);
    None when a commit did more than append (or its log entry is gone): the change data feed says then."""
    root = local_root(raw.table_uri)
    if root is None:
        return None
    added: list[tuple[int, str, int | None]] = []  # (version, path, row count)
    for version in range(start, end + 1):
        try:
            with open(root / "_delta_log" / f"{version:020d}.json") as commit:
                actions = [json.loads(line) for line in commit if line.strip()]
        except FileNotFoundError:
            return None
        for action in actions:
            if "cdc" in action or ("remove" in action and action["remove"].get("dataChange", True)):
                return None
            if "add" in action and action["add"].get("dataChange", True):
                count = json.loads(action["add"].get("stats") or "{}").get("numRecords")
                added.append((version, str(root / unquote(action["add"]["path"])), count))
    if not added:
        return _frame(_applied(schema).empty_table()), np.zeros(0, np.int64)
    # One scan of the files, in the order given, in the table's schema (files from before a column or struct
    # field was added get nulls); a row's version from its file's row count, else from its file's path
    paths = [path for _, path, _ in added]
    counts = [count for _, _, count in added]
    if None not in counts:
        rows = _scan_raw_files(schema, paths, with_path=False)
        versions = np.repeat([version for version, _, _ in added], counts).astype(np.int64)
        if len(versions) == rows.height:
            return rows, versions
    rows = _scan_raw_files(schema, paths, with_path=True)  # no (or wrong) row counts: by each row's path
    version_of = {path: version for version, path, _ in added}
    versions = rows[SOURCE_FILE].replace_strict(version_of, return_dtype=pl.Int64).to_numpy()
    return rows.drop(SOURCE_FILE), versions


def _scan_raw_files(schema: pa.Schema, paths: list[str], *, with_path: bool) -> pl.DataFrame:
    return pl.scan_parquet(
        paths, schema=_polars_schema(schema), missing_columns="insert", extra_columns="ignore",
        cast_options=pl.ScanCastOptions(integer_cast="upcast", missing_struct_fields="insert",
                                        extra_struct_fields="ignore"),
        include_file_paths=SOURCE_FILE if with_path else None,
    ).select(*RAW_COLUMNS, *([SOURCE_FILE] if with_path else [])).collect()


def _whole_versions(rows: pl.DataFrame, versions: np.ndarray,
                    max_events: int) -> Iterator[tuple[pl.DataFrame, int]]:
    """Runs of whole versions of about `max_events` rows, in version order, each with its last version."""
    if (np.diff(versions) < 0).any():  # the change data feed comes in version order, mostly
        order = versions.argsort(kind="stable")
        rows, versions = rows[order], versions[order]
    start = 0
    while start < len(versions):
        end = min(start + max_events, len(versions))
        while end < len(versions) and versions[end] == versions[end - 1]:
            end += 1  # whole versions only
        yield rows.slice(start, end - start), int(versions[end - 1])
        start = end


class CuratedStore:
    """The curated tables of one source table."""

    def __init__(self, table: SourceTable, locations: CuratedLocations):
        self.table = table
        self.locations = locations
        self.key = list(table.primary_key)

    def tables(self) -> tuple[DeltaTable, DeltaTable]:
        current = _ensure(self.locations.current, current_schema(self.table), CURATED_CONFIGURATION)
        history = _ensure(self.locations.history, history_schema(self.table), CURATED_CONFIGURATION)
        self._check_layout(history)
        return current, history

    def _check_layout(self, history: DeltaTable) -> None:
        """Refuse a history written in an earlier layout, saying how to rebuild it."""
        marks = pa.schema(history.schema().to_arrow()).field(UNCHANGED_TOAST).type
        if not pa.types.is_string(marks) and not pa.types.is_large_string(marks):
            raise OutdatedTableError(
                f"{self.locations.history}: written by an earlier version of cardo-pipeline (column {UNCHANGED_TOAST} "
                f"is {marks}, now text). Curated tables are derived from raw: delete {self.locations.current} and "
                f"{self.locations.history}, and the next run applies the raw table again from its start.")

    def applied_raw_version(self) -> int | None:
        """The last raw version both tables hold (the lower one: a crash between the commits is repaired)."""
        return _lowest_applied(load_table(self.locations.current), load_table(self.locations.history))

    def truncates(self) -> list[tuple[int, int]]:
        stored = load_table(self.locations.truncates)
        if stored is None:
            return []
        rows = pa.table(stored.to_pyarrow_table())
        return sorted(set(zip(rows["lsn"].to_pylist(), rows["offset"].to_pylist(), strict=True)))

    def apply(self, *, max_batch_events: int = DEFAULT_BATCH_EVENTS, log=lambda message: None) -> ApplyReport:
        started = time.monotonic()
        raw = load_table(self.locations.raw)
        if raw is None:
            before = self.applied_raw_version()
            return ApplyReport(self.table.name, before, before)
        current, history = self.tables()
        before = _lowest_applied(current, history)
        report = ApplyReport(self.table.name, before, before, truncates=self.truncates())
        writer = self._writer(current, history)
        for rows, version in raw_increments(raw, before, max_batch_events):
            self._apply_batch(rows, version, writer, report)
            log(f"{self.table.name}: raw up to version {version}: {rows.height} events, "
                f"{report.keys_touched} keys touched so far")
        report.current_version, report.history_version = current.version(), history.version()
        report.seconds = time.monotonic() - started
        return report

    def _writer(self, current: DeltaTable, history: DeltaTable) -> _Writer:
        """Merge-on-read where both tables allow it (local, with deletion vectors, and no feature its commits do
        not handle: `merge_on_read.supports`), else delta-rs MERGE where delta-rs implements every feature of
        both; else UnsupportedTableFeaturesError, before anything is written."""
        if supports(current) and supports(history):
            return _MergeOnReadWriter(self, MergeOnReadTable(current), MergeOnReadTable(history))
        for table in (current, history):
            _check_delta_rs_writes(table)
        return _MergeWriter(self, current, history)

    def expire_tombstones(self, retention: timedelta, *, now: datetime | None = None) -> int:
        """Forget the keys deleted longer than `retention` ago (by the delete's source commit time): all their
        history rows go, tombstone included, so an older event that arrives after this counts as a new key's.
        Returns how many keys were forgotten. Not run unless configured: by default tombstones stay as long as
        the history."""
        if retention < MIN_TOMBSTONE_RETENTION:
            raise ValueError(f"tombstone retention must be at least {MIN_TOMBSTONE_RETENTION.days} days, "
                             f"got {retention}")
        history = load_table(self.locations.history)
        if history is None:
            return 0
        self._check_layout(history)
        cutoff = (now or datetime.now(UTC)) - retention
        schema = history_schema(self.table)
        heads = pa.schema([schema.field(name) for name in [*self.key, *HEAD_COLUMNS]])
        merge_on_read = supports(history)
        if not merge_on_read:
            _check_delta_rs_writes(history)
        rows = (MergeOnReadTable(history).read(heads, self.key, None) if merge_on_read
                else _read(history, heads, self.key, None))
        expired = rows.filter(pl.col("is_current") & pl.col("is_deleted") & (pl.col("valid_from_ts") < cutoff))
        expired = expired.select(self.key).unique()
        if expired.is_empty():
            return 0
        doomed = rows.join(expired, on=self.key, how="semi", nulls_equal=True)
        metadata = {"cardo.expired_tombstones": str(expired.height), "cardo.tombstone_retention": str(retention)}
        if merge_on_read:
            MergeOnReadTable(history).commit(doomed.select(FILE, ROW), schema.empty_table(), metadata=metadata,
                                             operation="DELETE")
        else:
            keys = " OR ".join("(" + " AND ".join(f"{name} = {_sql_literal(value)}" for name, value in key.items())
                               + ")" for key in expired.iter_rows(named=True))
            history.delete(keys, commit_properties=CommitProperties(custom_metadata=metadata))
        return expired.height

    def _apply_batch(self, raw_rows: pl.DataFrame, raw_version: int, writer: _Writer, report: ApplyReport) -> None:
        changes, new_truncates = changes_from_raw(raw_rows, self.table)
        known = report.truncates  # read once per run, kept up to date here
        added = sorted(set(new_truncates) - set(known))
        if added:  # stored first: idempotent, and a batch that fails after it applies it again
            write_deltalake(self.locations.truncates, pa.table(
                {"lsn": [lsn for lsn, _ in added], "offset": [offset for _, offset in added]},
                schema=TRUNCATES_SCHEMA), mode="append")
        truncates = report.truncates = sorted(set(known) | set(added))
        if added:  # a truncate ends versions of keys the batch does not touch: every key is folded again
            old_history = writer.history_rows(None)
            touched = pl.concat([changes.select(self.key), old_history.select(self.key)]).unique()
            old_current = writer.current_rows(touched)
        else:
            touched = changes.select(self.key).unique()
            # both tables read at once: each scan waits on its files part of the time
            with ThreadPoolExecutor(max_workers=1) as pool:
                current_read = pool.submit(writer.current_rows, touched)
                heads = writer.history_heads(touched)
                old_current = current_read.result()
            changes, old_history = self._history_before(changes, heads, old_current, writer)
        history_before, current_before = _unlocated(old_history), _unlocated(old_current)
        log = fold_changes(log_from_history(history_before, self.table), changes, self.table, truncates)
        history_before = history_before.drop(RESOLVED, strict=False)
        new_history = history_frame(log, truncates, self.table)
        new_current = current_frame(log, truncates, self.table).select(current_schema(self.table).names)

        commit = _BatchCommit(raw_version, {"cardo.raw_version": str(raw_version),
                                            "cardo.events": str(raw_rows.height)})
        history_key = [*self.key, *VALID_FROM]
        # an event's own values never change once stored: only what later events decide can (its valid_to, and
        # TOAST-unchanged columns, resolved from the events before it)
        toasted = list(self.table.toasted)
        history_changes = _differing(new_history, history_before, history_key,
                                     ["valid_to_lsn", "valid_to_offset", "valid_to_ts", "is_current", *toasted])
        history_changes = history_changes.with_columns(marks_as_text(pl.col(UNCHANGED_TOAST)))
        # the two commits are independent: the history's is written while the current's rows are worked out
        with ThreadPoolExecutor(max_workers=1) as pool:
            history_written = pool.submit(writer.write_history, old_history, history_changes, commit)
            upserts = _differing(new_current, current_before, self.key, [*SEQUENCE, *toasted])
            gone = old_current.join(new_current.select(self.key), on=self.key, how="anti", nulls_equal=True)
            writer.write_current(old_current, upserts, gone, commit, report)
            history_written.result()
        report.events += raw_rows.height
        report.batches += 1
        report.keys_touched += touched.height
        report.history_rows_written += history_changes.height
        report.raw_version = raw_version

    def _history_before(self, changes: pl.DataFrame, heads: pl.DataFrame, old_current: pl.DataFrame,
                        writer: _Writer) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(the batch's changes less those already applied, the history rows the batch folds into).

        A key whose new events all follow its last stored row, which is current and in step with the current
        table, needs that row alone: it is rebuilt from the current row (or, for a tombstone, from the key) and
        the history's head columns, as reading the history's values is the costliest read of a batch. The
        other keys (late events, versions ended by a truncate, tables out of step after a crash) get all their
        history rows, read."""
        key = self.key
        last = last_of_each_key(heads, key)  # heads come sorted by key and valid_from
        changes, first = _without_stored(changes, heads, last, key)
        first = first.select(*key, pl.col(LSN).alias("__first_lsn"), pl.col(OFFSET).alias("__first_offset"))
        now = _unlocated(old_current).select(
            *key, pl.col(LSN).alias("__current_lsn"), pl.col(OFFSET).alias("__current_offset"))
        last = last.join(first, on=key, how="left", nulls_equal=True).join(now, on=key, how="left", nulls_equal=True)
        first_lsn, stored_lsn = pl.col("__first_lsn"), pl.col("valid_from_lsn")
        follows = first_lsn.is_null() | (first_lsn > stored_lsn) | (
            (first_lsn == stored_lsn) & (pl.col("__first_offset") > pl.col("valid_from_offset")))
        in_step = pl.when(pl.col("is_deleted")).then(pl.col("__current_lsn").is_null()).otherwise(
            (pl.col("__current_lsn") == pl.col("valid_from_lsn"))
            & (pl.col("__current_offset") == pl.col("valid_from_offset")))
        fast = last.filter(pl.col("is_current") & follows & in_step.fill_null(False))
        without_history = now.select(key).join(heads.select(key), on=key, how="anti", nulls_equal=True)
        slow = pl.concat([last.select(key).join(fast.select(key), on=key, how="anti", nulls_equal=True),
                          without_history]).unique()
        schema = history_schema(self.table)
        located = [name for name in (FILE, ROW) if name in heads.columns]
        # one row per key, sorted by key (as `last`); a tombstone's key has no current row: its values stay null
        values = _unlocated(old_current).select([c.name for c in self.table.columns])
        rebuilt = fast.select(*heads.columns).join(values, on=key, how="left", nulls_equal=True,
                                                     maintain_order="left")
        typed = _polars_schema(schema)
        rebuilt = rebuilt.select(
            *(pl.col(name).cast(dtype) if name in rebuilt.columns else pl.lit(None, dtype).alias(name)
              for name, dtype in typed.items()), *located)
        rebuilt = rebuilt.with_columns(pl.lit(True).alias(RESOLVED))
        if slow.is_empty():
            return changes, rebuilt
        read = writer.history_rows(slow).select(*typed, *located).with_columns(pl.lit(False).alias(RESOLVED))
        return changes, pl.concat([rebuilt, read]).sort([*key, *VALID_FROM])


def _polars_schema(schema: pa.Schema) -> pl.Schema:
    return pl.from_arrow(schema.empty_table()).schema  # type: ignore[union-attr]


def _without_stored(changes: pl.DataFrame, heads: pl.DataFrame, last: pl.DataFrame,
                    key: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the changes less the events the history holds, the key and sequence of each key's first change left).

    An event the history holds is a duplicate: the stored row wins, as in fold_changes. Only a key with an event
    at or before its last stored row can have one: the others skip the (costly) exact match."""
    earliest = _first_changes(changes, key)
    suspects = earliest.join(last.select(*key, *VALID_FROM), on=key, how="inner",
                             nulls_equal=True).filter(
        (pl.col(LSN) < pl.col("valid_from_lsn"))
        | ((pl.col(LSN) == pl.col("valid_from_lsn")) & (pl.col(OFFSET) <= pl.col("valid_from_offset")))).select(key)
    if suspects.is_empty():
        return changes, earliest
    stored = heads.join(suspects, on=key, how="semi", nulls_equal=True).select(
        *key, pl.col("valid_from_lsn").alias(LSN), pl.col("valid_from_offset").alias(OFFSET))
    position = "__cardo_position"
    candidates = changes.select(*key, *SEQUENCE).with_row_index(position).join(suspects, on=key, how="semi",
                                                                               nulls_equal=True)
    duplicates = candidates.join(stored, on=[*key, *SEQUENCE], how="semi", nulls_equal=True)[position]
    if duplicates.is_empty():
        return changes, earliest
    changes = changes.filter(~pl.int_range(pl.len(), dtype=duplicates.dtype).is_in(duplicates.implode()))
    return changes, _first_changes(changes, key)


def _first_changes(changes: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """The key and sequence of each key's first change."""
    return first_of_each_key(changes.select(*key, *SEQUENCE).sort([*key, *SEQUENCE]), key)


def _sql_literal(value: object) -> str:
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(value)


def _unlocated(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.drop(FILE, ROW, strict=False)


class _Writer:
    """How a batch reads the rows it folds and writes what changed (one commit per table)."""

    store: CuratedStore

    def history_rows(self, keys: pl.DataFrame | None) -> pl.DataFrame:
        """The history rows of `keys` (all, for None), sorted by key and valid_from."""
        rows = self._history(history_schema(self.store.table), keys)
        return rows.sort([*self.store.key, *VALID_FROM])

    def history_heads(self, keys: pl.DataFrame) -> pl.DataFrame:
        """The history rows of `keys` without their values (key, valid_from, is_current, is_deleted, the
        unchanged-TOAST marks), sorted by key and valid_from."""
        schema = history_schema(self.store.table)
        heads = pa.schema([schema.field(name) for name in [*self.store.key, *HEAD_COLUMNS]])
        return self._history(heads, keys).sort([*self.store.key, *VALID_FROM])

    def current_rows(self, keys: pl.DataFrame) -> pl.DataFrame:
        """The current rows of `keys` (one per key), in no particular order."""
        return self._current(current_schema(self.store.table), keys)

    def _history(self, schema: pa.Schema, keys: pl.DataFrame | None) -> pl.DataFrame:
        raise NotImplementedError

    def _current(self, schema: pa.Schema, keys: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError

    def write_history(self, old: pl.DataFrame, changed: pl.DataFrame, commit: _BatchCommit) -> None:
        """`changed`: new and changed rows, each with OLD_ROW, the position in `old` of the row it replaces."""
        raise NotImplementedError

    def write_current(self, old: pl.DataFrame, upserts: pl.DataFrame, gone: pl.DataFrame,
                      commit: _BatchCommit, report: ApplyReport) -> None:
        """`upserts`: new and changed rows, each with OLD_ROW, the position in `old` of the row it replaces;
        `gone`: the rows of `old` whose keys are deleted."""
        raise NotImplementedError


class _MergeOnReadWriter(_Writer):
    """Rows read with their positions; replaced rows marked in deletion vectors, changed rows appended."""

    def __init__(self, store: CuratedStore, current: MergeOnReadTable, history: MergeOnReadTable):
        self.store, self.current, self.history = store, current, history

    def _history(self, schema: pa.Schema, keys: pl.DataFrame | None) -> pl.DataFrame:
        return self.history.read(schema, self.store.key, keys)

    def _current(self, schema: pa.Schema, keys: pl.DataFrame) -> pl.DataFrame:
        return self.current.read(schema, self.store.key, keys)

    def write_history(self, old: pl.DataFrame, changed: pl.DataFrame, commit: _BatchCommit) -> None:
        # No change data file: readers derive the history's feed from the deletion vectors and new files, a
        # closed version reading as the delete of its open image and the insert of the closed one (as Delta's
        # own deletes with deletion vectors do). Writing the images again cost a fifth of a batch.
        replaced = old.select(FILE, ROW)[changed[OLD_ROW].drop_nulls()]
        schema = history_schema(self.store.table)
        self.history.commit(replaced, changed.select(schema.names),
                            app_id=RAW_VERSION_APP_ID, app_version=commit.raw_version, metadata=commit.metadata)

    def write_current(self, old: pl.DataFrame, upserts: pl.DataFrame, gone: pl.DataFrame,
                      commit: _BatchCommit, report: ApplyReport) -> None:
        replaced = old[upserts[OLD_ROW].drop_nulls()]
        schema = current_schema(self.store.table)
        self.current.commit(pl.concat([replaced.select(FILE, ROW), gone.select(FILE, ROW)]),
                            upserts.select(schema.names), app_id=RAW_VERSION_APP_ID,
                            app_version=commit.raw_version, metadata=commit.metadata,
                            change_feed=_change_feed(schema, replaced, upserts, gone))
        report.updated += replaced.height
        report.inserted += upserts.height - replaced.height
        report.deleted += gone.height


CHANGE_TYPE = "_change_type"


def _change_feed(schema: pa.Schema, replaced: pl.DataFrame, upserts: pl.DataFrame,
                 deleted: pl.DataFrame) -> pl.DataFrame:
    """A commit's change data as a MERGE records it: the replaced rows as update_preimage, the upserts as
    update_postimage (or insert, those that replace no row), the deleted rows as delete."""
    types = _polars_schema(schema)
    upsert_change = pl.when(pl.col(OLD_ROW).is_null()).then(pl.lit("insert")).otherwise(pl.lit("update_postimage"))
    return pl.concat([
        frame.select(*(pl.col(name).cast(dtype) for name, dtype in types.items()), change.alias(CHANGE_TYPE))
        for frame, change in ((replaced, pl.lit("update_preimage")), (upserts, upsert_change),
                              (deleted, pl.lit("delete")))
    ])


@dataclass(frozen=True)
class _BatchCommit:
    """What each table's commit of a batch records: the last raw version applied (a Delta app transaction) and
    the commit metadata."""

    raw_version: int
    metadata: dict[str, str]

    def properties(self) -> CommitProperties:
        """As delta-rs writes take it."""
        return CommitProperties(app_transactions=[Transaction(app_id=RAW_VERSION_APP_ID, version=self.raw_version)],
                                custom_metadata=self.metadata)


class _MergeWriter(_Writer):
    """delta-rs MERGE (copy-on-write): for tables on object stores, or made before deletion vectors."""

    def __init__(self, store: CuratedStore, current: DeltaTable, history: DeltaTable):
        self.store, self.current, self.history = store, current, history

    def _history(self, schema: pa.Schema, keys: pl.DataFrame | None) -> pl.DataFrame:
        return _read(self.history, schema, self.store.key, keys)

    def _current(self, schema: pa.Schema, keys: pl.DataFrame) -> pl.DataFrame:
        return _read(self.current, schema, self.store.key, keys)

    def write_history(self, old: pl.DataFrame, changed: pl.DataFrame, commit: _BatchCommit) -> None:
        table = self.store.table
        on = [*self.store.key, *VALID_FROM]
        if changed.is_empty():
            _commit_only(self.history, history_schema(table), commit.properties())
            return
        condition = " AND ".join(f"t.{c} = s.{c}" for c in on)
        schema = pa.schema([f.with_nullable(True) for f in history_schema(table)])
        (self.history.merge(changed.select(schema.names).to_arrow().cast(schema), condition, source_alias="s",
                            target_alias="t", commit_properties=commit.properties())
         .when_matched_update_all().when_not_matched_insert_all().execute())

    def write_current(self, old: pl.DataFrame, upserts: pl.DataFrame, gone: pl.DataFrame,
                      commit: _BatchCommit, report: ApplyReport) -> None:
        schema = current_schema(self.store.table)
        if upserts.is_empty() and gone.is_empty():
            _commit_only(self.current, schema, commit.properties())
            return
        source = pl.concat([
            upserts.select(schema.names).with_columns(pl.lit(True).alias(LIVE)),
            gone.select(self.store.key).with_columns(pl.lit(False).alias(LIVE)),
        ], how="diagonal_relaxed").to_arrow()
        source = source.cast(pa.schema([*(f.with_nullable(True) for f in schema), pa.field(LIVE, pa.bool_())]))
        on = " AND ".join(f"t.{c} = s.{c}" for c in self.store.key)
        result = (self.current.merge(source, on, source_alias="s", target_alias="t",
                                     commit_properties=commit.properties())
                  .when_matched_delete(predicate=f"s.{LIVE} = false")
                  .when_matched_update_all(except_cols=[LIVE])
                  .when_not_matched_insert_all(predicate=f"s.{LIVE} = true", except_cols=[LIVE])
                  .execute())
        report.inserted += result.get("num_target_rows_inserted", 0)
        report.updated += result.get("num_target_rows_updated", 0)
        report.deleted += result.get("num_target_rows_deleted", 0)


def _check_delta_rs_writes(table: DeltaTable) -> None:
    """Raise UnsupportedTableFeaturesError when delta-rs does not implement a feature of the table."""
    unsupported = delta_rs_unsupported_features(table)
    if unsupported:
        raise UnsupportedTableFeaturesError(table.table_uri, unsupported,
                                            writer="neither the merge-on-read commits nor delta-rs MERGE")


def _read(table: DeltaTable, schema: pa.Schema, key: list[str], keys: pl.DataFrame | None) -> pl.DataFrame:
    """The table's rows (of `keys` only, when given)."""
    if "deletionVectors" in (table.protocol().reader_features or []):
        # delta-rs's pyarrow dataset refuses deletion vectors (a table merge-on-read refused, say for a feature
        # its commits do not handle) and polars column mapping: delta-rs's query engine reads both
        if keys is not None and keys.is_empty():
            return _frame(schema.empty_table())
        columns = ", ".join(f'"{name}"' for name in schema.names)
        rows = pa.table(QueryBuilder().register("t", table).execute(f"select {columns} from t").read_all())
        frame = _frame(rows.cast(schema))
        if keys is not None:
            frame = frame.join(keys.select(key).unique(), on=key, how="semi", nulls_equal=True)
        return frame
    dataset = table.to_pyarrow_dataset()
    if keys is None:
        rows = dataset.to_table(columns=schema.names)
    elif keys.is_empty():
        rows = schema.empty_table()
    else:
        condition = None
        for name in key:
            term = pc.field(name).isin(keys[name].unique().to_arrow())
            condition = term if condition is None else condition & term
        rows = dataset.to_table(columns=schema.names, filter=condition)
    frame = pl.from_arrow(rows.cast(schema))
    assert isinstance(frame, pl.DataFrame)
    if keys is not None and len(key) > 1 and not frame.is_empty():
        frame = frame.join(keys, on=key, how="semi")  # the per-column isin is a superset for composite keys
    return frame


def _differing(new: pl.DataFrame, old: pl.DataFrame, on: list[str], compared: list[str]) -> pl.DataFrame:
    """Rows of `new` that `old` lacks or holds with other values in `compared` (null equals null), in their order,
    each with OLD_ROW: the position in `old` of the row it replaces (null for a row `old` lacks)."""
    if old.is_empty() or new.is_empty():
        return new.with_columns(pl.lit(None, pl.UInt32).alias(OLD_ROW))
    # the join takes the compared columns only; the wide rows are filtered once (`old` holds each key once)
    joined = new.select(*on, *compared).join(old.select(*on, *compared).with_row_index(OLD_ROW), on=on, how="left",
                                             suffix="__old", nulls_equal=True, maintain_order="left")
    if joined.height != new.height:
        raise ValueError(f"rows of the stored table repeat a key of {on}")
    differs = pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}__old")) for c in compared)
    keep = joined.select(pl.col(OLD_ROW).is_null() | differs).to_series()
    return new.filter(keep).with_columns(joined[OLD_ROW].filter(keep))


def _commit_only(table: DeltaTable, schema: pa.Schema, commit: _BatchCommit) -> None:
    """A commit with no rows that still moves the applied raw version."""
    write_deltalake(table, schema.empty_table(), mode="append", commit_properties=commit)
