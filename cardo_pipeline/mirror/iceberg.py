"""The curated current state mirrored into Apache Iceberg, fed incrementally from the Delta change data feed.

Per run: the Delta versions after the one last mirrored (a table property of the Iceberg table,
`cardo.delta_version`) are read from the change data feed and reduced to each key's last change; one Iceberg
transaction deletes every changed key and appends the keys' new rows, and moves the property with them, so a
reader never sees half a batch and a run that dies before its commit is simply done again. The first run (or
one whose Delta versions are no longer in the feed) copies the whole current state in one overwrite.

Deletes are by key (`In` filter), which pyiceberg applies copy-on-write to the files that hold those keys;
pyiceberg's `upsert` compares rows one by one (about 16k rows/s here) and cannot delete.
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
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, In, Or
from pyiceberg.table import Table as IcebergTable

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


COPY_ROWS = 500_000  # rows per append of a full copy (1M: a 10M-row copy peaked at ~4 GB)


@dataclass
class MirrorReport:
    identifier: str
    delta_version_before: int | None
    delta_version: int | None
    keys_changed: int = 0
    rows_appended: int = 0
    full_copy: bool = False
    snapshot_id: int | None = None
    rows: int = 0
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
            return self.catalog.create_table_if_not_exists(self.identifier, schema=self.schema)

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
            report.rows, report.seconds = self._count(iceberg), time.monotonic() - started
            return report
        changes = None if before is None else self._changes(delta, before + 1, latest)
        with iceberg.transaction() as tx:
            if changes is None:  # first run, or the feed no longer reaches back: copy everything
                copied = 0
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Delete operation did not match any records")
                    tx.delete(AlwaysTrue())
                for rows in self._live_rows(latest):  # in pieces: a whole 10M-row table took ~10 GB at once
                    tx.append(rows)
                    copied += rows.num_rows
                report.full_copy, report.rows_appended, report.keys_changed = True, copied, copied
            else:
                keys, upserts = changes
                if keys.num_rows:
                    with warnings.catch_warnings():  # new keys match nothing, and pyiceberg says so each time
                        warnings.filterwarnings("ignore", "Delete operation did not match any records")
                        tx.delete(self._key_filter(keys))
                if upserts.num_rows:
                    tx.append(upserts)
                report.keys_changed, report.rows_appended = keys.num_rows, upserts.num_rows
            tx.set_properties({DELTA_VERSION_PROPERTY: str(latest)})
        iceberg = self.catalog.load_table(self.identifier)
        snapshot = iceberg.current_snapshot()
        report.delta_version = latest
        report.snapshot_id = None if snapshot is None else snapshot.snapshot_id
        report.rows = self._count(iceberg)
        report.seconds = time.monotonic() - started
        return report

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

    def _live_rows(self, version: int) -> Iterator[pa.Table]:
        """The Delta version's live rows (deletion vectors applied), in pieces of COPY_ROWS."""
        scan = pl.scan_delta(self.delta_uri, version=version).select(self.schema.names)
        for piece in scan.collect_batches(chunk_size=COPY_ROWS):
            yield piece.to_arrow().cast(self.schema)

    def _key_filter(self, keys: pa.Table) -> BooleanExpression:
        if len(self.key) == 1:
            return In(self.key[0], pc.unique(keys[self.key[0]]).to_pylist())
        return Or(*(And(*(EqualTo(name, value) for name, value in row.items())) for row in keys.to_pylist()))

    def _count(self, iceberg: IcebergTable) -> int:
        snapshot = iceberg.current_snapshot()
        if snapshot is None or snapshot.summary is None:
            return 0
        return int(snapshot.summary.get("total-records", 0))
