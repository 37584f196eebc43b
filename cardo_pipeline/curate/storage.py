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

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from cardo_pipeline.curate.apply import (
    HISTORY_COLUMNS,
    LSN,
    OFFSET,
    SEQUENCE,
    SOURCE_TS,
    UNCHANGED_TOAST,
    changes_from_raw,
    current_frame,
    fold_changes,
    history_frame,
    log_from_history,
    log_schema,
)
from cardo_pipeline.ingest.delta_log import load_table
from cardo_pipeline.tables import SourceTable

RAW_VERSION_APP_ID = "cardo/raw-version"  # the app transaction whose version is the last raw version applied
CURATED_CONFIGURATION = {"delta.enableChangeDataFeed": "true"}
DEFAULT_BATCH_EVENTS = 200_000
LIVE = "_cardo_live"


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
                      log.field(UNCHANGED_TOAST)])


TRUNCATES_SCHEMA = pa.schema([pa.field("lsn", pa.int64(), False), pa.field("offset", pa.int64(), False)])


@dataclass(frozen=True)
class CuratedLocations:
    raw: str
    current: str
    history: str
    truncates: str

    @classmethod
    def in_lake(cls, lake: str, table: SourceTable) -> CuratedLocations:
        root = lake.rstrip("/")
        return cls(f"{root}/raw/{table.name}", f"{root}/curated/{table.name}",
                   f"{root}/curated/{table.name}_history", f"{root}/curated/_truncates/{table.name}")


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


def _plain(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The raw change feed's columns in the raw schema (the feed reads text as string_view)."""
    return table.select(schema.names).cast(schema)


def raw_increments(raw: DeltaTable, after: int | None, max_events: int) -> Iterator[tuple[pa.Table, int]]:
    """The raw rows of the versions after `after`, in runs of whole versions of about `max_events` rows, each
    with its last version. Without a change data feed (raw tables from before it was switched on) the whole table
    comes as one run: re-applying what was applied changes nothing."""
    latest = raw.version()
    if after is not None and after >= latest:
        return
    schema = pa.schema(raw.schema().to_arrow())
    try:
        feed = pa.table(raw.load_cdf(starting_version=0 if after is None else after + 1, ending_version=latest)
                        .read_all())
    except Exception:  # noqa: BLE001 - delta-rs raises a generic error for versions without a change feed
        yield raw.to_pyarrow_table().cast(schema), latest
        return
    inserts = pc.equal(feed["_change_type"].cast(pa.string()), "insert")
    rows, versions = _plain(feed, schema).filter(inserts), feed["_commit_version"].filter(inserts).to_numpy()
    order = versions.argsort(kind="stable")
    rows, versions = rows.take(order), versions[order]
    start = 0
    while start < len(versions):
        end = min(start + max_events, len(versions))
        while end < len(versions) and versions[end] == versions[end - 1]:
            end += 1  # whole versions only
        yield rows.slice(start, end - start), int(versions[end - 1])
        start = end
    if len(versions) == 0:
        yield schema.empty_table(), latest


class CuratedStore:
    """The curated tables of one source table."""

    def __init__(self, table: SourceTable, locations: CuratedLocations):
        self.table = table
        self.locations = locations
        self.key = list(table.primary_key)

    def tables(self) -> tuple[DeltaTable, DeltaTable]:
        return (_ensure(self.locations.current, current_schema(self.table), CURATED_CONFIGURATION),
                _ensure(self.locations.history, history_schema(self.table), CURATED_CONFIGURATION))

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
        for rows, version in raw_increments(raw, before, max_batch_events):
            self._apply_batch(rows, version, current, history, report)
            log(f"{self.table.name}: raw up to version {version}: {rows.num_rows} events, "
                f"{report.keys_touched} keys touched so far")
        report.current_version, report.history_version = current.version(), history.version()
        report.seconds = time.monotonic() - started
        return report

    def _apply_batch(self, raw_rows: pa.Table, raw_version: int, current: DeltaTable, history: DeltaTable,
                     report: ApplyReport) -> None:
        changes, new_truncates = changes_from_raw(raw_rows, self.table)
        known = report.truncates  # read once per run, kept up to date here
        added = sorted(set(new_truncates) - set(known))
        if added:  # stored first: idempotent, and a batch that fails after it applies it again
            write_deltalake(self.locations.truncates, pa.table(
                {"lsn": [lsn for lsn, _ in added], "offset": [offset for _, offset in added]},
                schema=TRUNCATES_SCHEMA), mode="append")
        truncates = report.truncates = sorted(set(known) | set(added))
        if added:  # a truncate ends versions of keys the batch does not touch: every key is folded again
            old_history = self._history_rows(history, None)
            touched = pl.concat([changes.select(self.key), old_history.select(self.key)]).unique()
        else:
            touched = changes.select(self.key).unique()
            old_history = self._history_rows(history, touched)
        log = fold_changes(log_from_history(old_history, self.table), changes, self.table, truncates)
        new_history = history_frame(log, truncates, self.table)
        new_current = current_frame(log, truncates, self.table).select(current_schema(self.table).names)
        old_current = self._current_rows(current, touched)

        commit = CommitProperties(
            app_transactions=[Transaction(app_id=RAW_VERSION_APP_ID, version=raw_version)],
            custom_metadata={"cardo.raw_version": str(raw_version), "cardo.events": str(raw_rows.num_rows)},
        )
        history_changes = _differing(new_history, old_history, [*self.key, "valid_from_lsn", "valid_from_offset"])
        self._merge_history(history, history_changes, commit)
        upserts = _differing(new_current, old_current, self.key)
        gone = old_current.join(new_current.select(self.key), on=self.key, how="anti")
        self._merge_current(current, upserts, gone.select(self.key), commit, report)
        report.events += raw_rows.num_rows
        report.batches += 1
        report.keys_touched += touched.height
        report.history_rows_written += history_changes.height
        report.raw_version = raw_version

    def _history_rows(self, history: DeltaTable, keys: pl.DataFrame | None) -> pl.DataFrame:
        return _read(history, history_schema(self.table), self.key, keys)

    def _current_rows(self, current: DeltaTable, keys: pl.DataFrame) -> pl.DataFrame:
        return _read(current, current_schema(self.table), self.key, keys)

    def _merge_history(self, history: DeltaTable, rows: pl.DataFrame, commit: CommitProperties) -> None:
        if rows.is_empty():
            _commit_only(history, history_schema(self.table), commit)
            return
        on = " AND ".join(f"t.{c} = s.{c}" for c in [*self.key, "valid_from_lsn", "valid_from_offset"])
        schema = pa.schema([f.with_nullable(True) for f in history_schema(self.table)])
        (history.merge(rows.to_arrow().cast(schema), on, source_alias="s", target_alias="t",
                       commit_properties=commit)
         .when_matched_update_all().when_not_matched_insert_all().execute())

    def _merge_current(self, current: DeltaTable, upserts: pl.DataFrame, gone: pl.DataFrame,
                       commit: CommitProperties, report: ApplyReport) -> None:
        if upserts.is_empty() and gone.is_empty():
            _commit_only(current, current_schema(self.table), commit)
            return
        schema = current_schema(self.table)
        source = pl.concat([
            upserts.select(schema.names).with_columns(pl.lit(True).alias(LIVE)),
            gone.with_columns(pl.lit(False).alias(LIVE)),
        ], how="diagonal_relaxed").to_arrow()
        source = source.cast(pa.schema([*(f.with_nullable(True) for f in schema), pa.field(LIVE, pa.bool_())]))
        on = " AND ".join(f"t.{c} = s.{c}" for c in self.key)
        result = (current.merge(source, on, source_alias="s", target_alias="t", commit_properties=commit)
                  .when_matched_delete(predicate=f"s.{LIVE} = false")
                  .when_matched_update_all(except_cols=[LIVE])
                  .when_not_matched_insert_all(predicate=f"s.{LIVE} = true", except_cols=[LIVE])
                  .execute())
        report.inserted += result.get("num_target_rows_inserted", 0)
        report.updated += result.get("num_target_rows_updated", 0)
        report.deleted += result.get("num_target_rows_deleted", 0)


def _read(table: DeltaTable, schema: pa.Schema, key: list[str], keys: pl.DataFrame | None) -> pl.DataFrame:
    """The table's rows (of `keys` only, when given), sorted by key and sequence."""
    dataset = table.to_pyarrow_dataset()
    if keys is None:
        rows = dataset.to_table()
    elif keys.is_empty():
        rows = schema.empty_table()
    else:
        condition = None
        for name in key:
            term = pc.field(name).isin(keys[name].unique().to_arrow())
            condition = term if condition is None else condition & term
        rows = dataset.to_table(filter=condition)
    frame = pl.from_arrow(rows.cast(schema))
    assert isinstance(frame, pl.DataFrame)
    if keys is not None and len(key) > 1 and not frame.is_empty():
        frame = frame.join(keys, on=key, how="semi")  # the per-column isin is a superset for composite keys
    sequence = ["valid_from_lsn", "valid_from_offset"] if "valid_from_lsn" in schema.names else SEQUENCE
    return frame.sort([*key, *sequence])


def _differing(new: pl.DataFrame, old: pl.DataFrame, on: list[str]) -> pl.DataFrame:
    """Rows of `new` that `old` lacks or holds with other values (null equals null)."""
    if old.is_empty() or new.is_empty():
        return new
    columns = [c for c in new.columns if c not in on]
    present = "__cardo_present"
    joined = new.join(old.select(on + columns).with_columns(pl.lit(True).alias(present)), on=on, how="left",
                      suffix="__old", nulls_equal=True)
    differs = pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}__old")) for c in columns)
    return joined.filter(pl.col(present).is_null() | differs).select(new.columns)


def _commit_only(table: DeltaTable, schema: pa.Schema, commit: CommitProperties) -> None:
    """A commit with no rows that still moves the applied raw version."""
    write_deltalake(table, schema.empty_table(), mode="append", commit_properties=commit)
