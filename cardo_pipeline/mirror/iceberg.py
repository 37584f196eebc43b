"""The curated current state mirrored into Apache Iceberg, fed incrementally from the Delta change data feed.

Per run: the Delta versions after the one last mirrored (a table property of the Iceberg table,
`cardo.delta_version`) are read from the change data feed and reduced to each key's last change; one Iceberg
snapshot deletes the rows of every changed key and appends the keys' new rows, and the same catalog commit moves
the property, so a reader never sees half a batch and a run that dies before its commit is simply done again.
The first run (or one whose Delta versions are no longer in the feed) copies the whole current state in one
snapshot that replaces every file.

Deletes are merge-on-read (`mirror.position_deletes`): the changed keys' rows are located (data file, row
position) and written as position delete files, which readers apply; no data file is rewritten (pyiceberg's own
delete rewrites every file a key sits in: 18 s for 200k keys in 10M rows). Delete files slow reads as they pile
up, so `compact_mirror` (the maintenance job) rewrites the live rows once enough of them are deleted. A format
version 1 table (no delete files) falls back to pyiceberg's copy-on-write delete by key.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In, Or
from pyiceberg.table import Table as IcebergTable

from cardo_pipeline.mirror.position_deletes import (
    TableStats,
    commit_row_delta,
    live_pieces,
    locate,
    replace_all,
    supports_position_deletes,
    table_stats,
)
from cardo_pipeline.tables import SourceTable

DELTA_VERSION_PROPERTY = "cardo.delta_version"
_CHANGE, _VERSION = "_change_type", "_commit_version"


def open_catalog(properties: dict[str, str], name: str = "cardo") -> Catalog:
    """Any pyiceberg catalog (`type` sql, rest, glue, hive, ...) from its properties."""
    return load_catalog(name, **properties)


def sql_catalog(uri: str, warehouse: Path | str, name: str = "cardo") -> Catalog:
    """pyiceberg's SQL catalog (SQLite locally); the warehouse folder holds data and metadata files."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    Path(warehouse).mkdir(parents=True, exist_ok=True)
    return load_catalog(name, type="sql", uri=uri, warehouse=Path(warehouse).absolute().as_uri())


COPY_ROWS = 500_000  # rows per piece written by a full copy or a compaction (1M: a 10M-row copy peaked at ~4 GB)
COMPACT_DELETED_SHARE = 0.10  # compact once this share of the rows written is deleted by position ...
COMPACT_DELETE_FILES = 100  # ... or this many delete files are live (each one is a file every scan opens)


@dataclass
class MirrorReport:
    identifier: str
    delta_version_before: int | None
    delta_version: int | None
    keys_changed: int = 0
    rows_appended: int = 0
    rows_deleted_by_position: int = 0
    delete_files_written: int = 0
    full_copy: bool = False
    snapshot_id: int | None = None
    rows: int = 0  # live rows: the rows written minus those deleted by position
    position_deletes: int = 0  # in the table now, until a compaction
    delete_files: int = 0
    seconds: float = 0.0

    def take_counts(self, stats: TableStats) -> None:
        self.rows, self.position_deletes = stats.live_rows, stats.position_deletes
        self.delete_files = stats.delete_files


@dataclass
class CompactionReport:
    compacted: bool
    rows: int  # live rows, the same before and after
    position_deletes_before: int = 0
    delete_files_before: int = 0
    data_files_before: int = 0
    data_files_after: int = 0
    snapshot_id: int | None = None
    seconds: float = 0.0


def _iceberg_schema(arrow: pa.Schema) -> pa.Schema:
    return pa.schema([field.with_nullable(True) for field in arrow])


class IcebergMirror:
    """Mirror of one curated Delta table (`delta_uri`, with `schema`) as `identifier` in `catalog`."""

    def __init__(self, catalog: Catalog, identifier: str, delta_uri: str, table: SourceTable, schema: pa.Schema):
        self.catalog, self.identifier, self.delta_uri = catalog, identifier, delta_uri
        self.table, self.schema = table, _iceberg_schema(schema)
        self.key = list(table.primary_key)

    def iceberg_table(self) -> IcebergTable:
        try:
            return self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            namespace = self.identifier.rsplit(".", 1)[0]
            self.catalog.create_namespace_if_not_exists(namespace)
            # Version 2 explicitly (pyiceberg's default today): the first with position deletes
            return self.catalog.create_table_if_not_exists(self.identifier, schema=self.schema,
                                                           properties={"format-version": "2"})

    def mirrored_version(self, iceberg: IcebergTable | None = None) -> int | None:
        iceberg = iceberg or self.iceberg_table()
        value = iceberg.properties.get(DELTA_VERSION_PROPERTY)
        return None if value is None else int(value)

    def sync(self) -> MirrorReport:
        started = time.monotonic()
        delta = DeltaTable(self.delta_uri)
        latest = delta.version()
        iceberg = self.iceberg_table()
        before = self.mirrored_version(iceberg)
        report = MirrorReport(self.identifier, before, before)
        if before == latest:
            report.take_counts(table_stats(iceberg))
            report.seconds = time.monotonic() - started
            return report
        changes = None if before is None else self._changes(delta, before + 1, latest)
        properties = {DELTA_VERSION_PROPERTY: str(latest)}
        if changes is None:  # first run, or the feed no longer reaches back: copy everything
            # in pieces (a whole 10M-row table took ~10 GB at once), replacing every data and delete file
            copied = replace_all(iceberg, self.live_rows(latest), properties).rows_written
            report.full_copy, report.rows_appended, report.keys_changed = True, copied, copied
        else:
            keys, upserts = changes
            report.keys_changed, report.rows_appended = keys.num_rows, upserts.num_rows
            if supports_position_deletes(iceberg):
                committed = commit_row_delta(iceberg, locate(iceberg, keys), upserts, properties)
                report.rows_deleted_by_position = committed.rows_deleted
                report.delete_files_written = committed.delete_files_written
            else:
                self._copy_on_write(iceberg, keys, upserts, properties)
        iceberg = self.catalog.load_table(self.identifier)
        snapshot = iceberg.current_snapshot()
        report.delta_version = latest
        report.snapshot_id = None if snapshot is None else snapshot.snapshot_id
        report.take_counts(table_stats(iceberg))
        report.seconds = time.monotonic() - started
        return report

    def _copy_on_write(self, iceberg: IcebergTable, keys: pa.Table, upserts: pa.Table,
                       properties: dict[str, str]) -> None:
        """A format version 1 table: pyiceberg deletes the keys by rewriting the files that hold them."""
        with iceberg.transaction() as tx:
            if keys.num_rows:
                with warnings.catch_warnings():  # new keys match nothing, and pyiceberg says so each time
                    warnings.filterwarnings("ignore", "Delete operation did not match any records")
                    tx.delete(self._key_filter(keys))
            if upserts.num_rows:
                tx.append(upserts)
            tx.set_properties(properties)

    def _changes(self, delta: DeltaTable, start: int, end: int) -> tuple[pa.Table, pa.Table] | None:
        """(every changed key, the new rows of the keys still live), or None when the feed cannot give them."""
        try:
            feed = pa.table(delta.load_cdf(starting_version=start, ending_version=end).read_all())
        except Exception:  # noqa: BLE001 - delta-rs has no specific error for versions outside the feed
            return None
        frame = pl.from_arrow(feed.select([*self.schema.names, _CHANGE, _VERSION]))
        assert isinstance(frame, pl.DataFrame)
        frame = frame.with_columns(pl.col(_CHANGE).cast(pl.String)).filter(pl.col(_CHANGE) != "update_preimage")
        # A merge-on-read commit replaces a row by marking the old one deleted and adding the new one: within a
        # version, a key's delete comes before its insert (a commit never adds a row and deletes it)
        rank = (pl.col(_CHANGE) != "delete").cast(pl.Int8).alias("__rank")
        last = (frame.with_columns(rank).sort([_VERSION, "__rank"], maintain_order=True)
                .group_by(self.key, maintain_order=True).last().drop("__rank"))
        keys = last.select(self.key).to_arrow()
        upserts = last.filter(pl.col(_CHANGE) != "delete").select(self.schema.names).to_arrow().cast(self.schema)
        return keys, upserts

    def live_rows(self, version: int) -> Iterator[pa.Table]:
        """The Delta version's live rows (deletion vectors applied), in pieces of COPY_ROWS."""
        scan = pl.scan_delta(self.delta_uri, version=version).select(self.schema.names)
        for piece in scan.collect_batches(chunk_size=COPY_ROWS):
            yield piece.to_arrow().cast(self.schema)

    def _key_filter(self, keys: pa.Table) -> BooleanExpression:
        if len(self.key) == 1:
            return In(self.key[0], pc.unique(keys[self.key[0]]).to_pylist())
        return Or(*(And(*(EqualTo(name, value) for name, value in row.items())) for row in keys.to_pylist()))


def compact_mirror(iceberg: IcebergTable, *, min_deleted_share: float = COMPACT_DELETED_SHARE,
                   max_delete_files: int = COMPACT_DELETE_FILES, rows_per_piece: int = COPY_ROWS) -> CompactionReport:
    """Rewrite the mirror's live rows without delete files, when enough rows are deleted or delete files live.

    One snapshot replaces every data and delete file with the live rows, read from the mirror itself and written a
    piece at a time (memory stays about one piece). The table properties (`cardo.delta_version`) stay as they are:
    a sync that commits first makes the compaction fail (`ConcurrentChangeError`) rather than undo its rows."""
    started = time.monotonic()
    stats = table_stats(iceberg)
    report = CompactionReport(False, stats.live_rows, stats.position_deletes, stats.delete_files, stats.data_files,
                              stats.data_files)
    if stats.delete_files and (stats.deleted_share >= min_deleted_share or stats.delete_files >= max_delete_files):
        committed = replace_all(iceberg, live_pieces(iceberg, rows_per_piece))
        report.compacted, report.rows = True, committed.rows_written
        report.data_files_after, report.snapshot_id = committed.data_files_written, committed.snapshot_id
    report.seconds = time.monotonic() - started
    return report
