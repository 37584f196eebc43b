"""Merge-on-read changes to an Iceberg v2 table: rows are deleted by position, not by rewriting their files.

pyiceberg 0.12 deletes copy-on-write: deleting 200k keys spread over a 10M-row table rewrites every data file
they sit in (~18 s). Iceberg v2 can instead record the deleted rows as position delete files (data file path, row
position) that readers apply; this module writes those and commits them with appended rows in one snapshot:

- `locate` finds where the live rows of some keys are: (data file, row position) in the current snapshot;
- `commit_row_delta` writes one position delete file per data file touched, appends the new rows and sets table
  properties, all in one snapshot and one catalog commit (Iceberg's RowDelta, which pyiceberg lacks);
- `replace_all` swaps every data and delete file for new rows in one snapshot, written in pieces (a full copy, or
  a compaction that folds the delete files back into the data);
- `table_stats` counts the live rows (the summary's total-records counts deleted rows too).

Positions belong to the snapshot they were located in, so a commit refuses to land on any other: a concurrent
commit (a compaction, another writer) makes it fail with `ConcurrentChangeError` and its files are removed.

Relies on pyiceberg internals, pinned as pyiceberg==0.12.0 in pyproject.toml; re-check all of these on upgrade:
- `pyiceberg.table.update.snapshot._SnapshotProducer`, subclassed with its hooks `_manifests`, `_summary`,
  `_existing_manifests`, `_deleted_entries`, `_validate_concurrency` and the retry protocol of
  `Transaction.commit_transaction` (`_commit_window`, producers re-run on `CommitFailedException`);
- `pyiceberg.manifest.ManifestWriterV2`, subclassed to write a DELETES manifest (its `content` and `_meta`);
- `pyiceberg.io.pyarrow._dataframe_to_data_files` and `_check_pyarrow_schema_compatible` (what `append` does);
- `DataFile.from_args` drops `spec_id` (not a struct field), so it is set on the object afterwards;
- pyiceberg's `DeleteFileIndex` attaches a position delete file to one data file only when the file's `file_path`
  lower and upper bounds are equal: the bounds are written in full, not truncated as data columns are.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.conversions import from_bytes
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import (
    ArrowScan,
    _check_pyarrow_schema_compatible,
    _dataframe_to_data_files,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import (
    DataFile,
    DataFileContent,
    FileFormat,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestFile,
    ManifestWriter,
    ManifestWriterV2,
)
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties, Transaction
from pyiceberg.table.snapshots import Operation, SnapshotSummaryCollector, Summary, update_snapshot_summaries
from pyiceberg.table.update.snapshot import _SnapshotProducer
from pyiceberg.typedef import EMPTY_DICT
from pyiceberg.types import IntegerType, LongType, NestedField, StringType

# The position delete file schema, with the field ids the Iceberg spec reserves for it
FILE_PATH_ID, POS_ID = 2147483546, 2147483545
_DELETE_SCHEMA = Schema(
    NestedField(FILE_PATH_ID, "file_path", StringType(), required=True),
    NestedField(POS_ID, "pos", LongType(), required=True),
)
_DELETE_ARROW_SCHEMA = pa.schema([
    pa.field("file_path", pa.string(), nullable=False, metadata={b"PARQUET:field_id": str(FILE_PATH_ID).encode()}),
    pa.field("pos", pa.int64(), nullable=False, metadata={b"PARQUET:field_id": str(POS_ID).encode()}),
])
# Untruncated bounds, as Java's MetricsConfig.forPositionDelete: a truncated file_path bound would make readers
# attach the delete file to every data file of the partition instead of the one it is about.
_DELETE_METRICS = {TableProperties.DEFAULT_WRITE_METRICS_MODE: "full"}
_WORKERS = min(4, os.cpu_count() or 1)


class ConcurrentChangeError(ValidationException):
    """The table changed between locating the rows and committing: the positions may point elsewhere now."""


@dataclass(frozen=True)
class LocatedRows:
    """Where some keys' live rows are in one snapshot: `positions` (file_path, pos) and the DataFiles they are in."""

    snapshot_id: int | None
    positions: pl.DataFrame
    data_files: dict[str, DataFile] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.positions.height


@dataclass(frozen=True)
class Committed:
    snapshot_id: int | None
    rows_deleted: int = 0
    delete_files_written: int = 0
    rows_written: int = 0
    data_files_written: int = 0


@dataclass(frozen=True)
class TableStats:
    """From the current snapshot's summary: data rows written (`physical_rows`), of which deleted by position."""

    physical_rows: int = 0
    position_deletes: int = 0
    data_files: int = 0
    delete_files: int = 0

    @property
    def live_rows(self) -> int:
        return self.physical_rows - self.position_deletes

    @property
    def deleted_share(self) -> float:
        return self.position_deletes / self.physical_rows if self.physical_rows else 0.0


def supports_position_deletes(table: Table) -> bool:
    """Format version 2 only: v1 has no delete files, v3 replaces position delete files by deletion vectors."""
    return table.metadata.format_version == 2


def table_stats(table: Table) -> TableStats:
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return TableStats()
    summary = snapshot.summary
    totals = ("total-records", "total-position-deletes", "total-data-files", "total-delete-files")
    if any(total not in summary for total in totals) or int(summary.get("total-equality-deletes", 0)):
        # pyiceberg leaves out a total it cannot keep (one that would go negative): count the live rows instead
        return TableStats(physical_rows=table.scan().count())
    return TableStats(*(int(summary[total]) for total in totals))


# --- locate ---------------------------------------------------------------------------------------------------------

def locate(table: Table, keys: pa.Table) -> LocatedRows:
    """The live rows of `keys` (a table of the key columns, any number of them) in the table's current snapshot.

    Reads the key columns of every data file whose key bounds may hold one of the keys, and drops the positions
    the file's delete files already delete. A key present twice is located twice."""
    snapshot = table.current_snapshot()
    empty = pl.DataFrame(schema={"file_path": pl.String, "pos": pl.Int64})
    if snapshot is None or keys.num_rows == 0:
        return LocatedRows(None if snapshot is None else snapshot.snapshot_id, empty)
    schema = table.schema()
    key_fields = [schema.find_field(name) for name in keys.column_names]
    wanted = pl.from_arrow(keys).unique()
    assert isinstance(wanted, pl.DataFrame)
    tasks = [task for task in table.scan().plan_files() if _may_hold(task.file, key_fields, wanted)]

    def positions_in(task: Any) -> pl.DataFrame | None:
        with table.io.new_input(task.file.file_path).open() as stream:
            parquet = pq.ParquetFile(stream)
            names = [_column_name(parquet, key_field) for key_field in key_fields]
            columns = parquet.read(columns=names, use_threads=False).rename_columns(keys.column_names)
        frame = pl.from_arrow(columns).cast(wanted.schema).with_row_index("pos")  # type: ignore[union-attr]
        if len(key_fields) == 1:
            name = keys.column_names[0]
            hits = frame.filter(pl.col(name).is_in(wanted.get_column(name).implode()))
        else:
            hits = frame.join(wanted, on=keys.column_names, how="semi", nulls_equal=True)
        return hits.select(pl.col("pos").cast(pl.Int64)) if hits.height else None

    with ThreadPoolExecutor(_WORKERS) as pool:
        searched = zip(tasks, pool.map(positions_in, tasks), strict=True)
        found = [(task, hits) for task, hits in searched if hits is not None]
        delete_files = {d.file_path: d for task, _ in found for d in task.delete_files}  # each read once
        read = pool.map(lambda delete_file: _deleted_positions(table, delete_file), delete_files.values())
        deleted = dict(zip(delete_files, read, strict=True))

    frames = []
    for task, hits in found:
        path = task.file.file_path
        already = [deleted[d.file_path][path] for d in task.delete_files if path in deleted[d.file_path]]
        if already:
            hits = hits.filter(~pl.col("pos").is_in(pl.Series(np.concatenate(already)).implode()))
        frames.append(hits.select(pl.lit(path).alias("file_path"), "pos"))
    positions = pl.concat(frames) if frames else empty
    data_files = {task.file.file_path: task.file for task, _ in found}
    return LocatedRows(snapshot.snapshot_id, positions, data_files)


def _may_hold(data_file: DataFile, key_fields: list[NestedField], wanted: pl.DataFrame) -> bool:
    """False when an integer key column's bounds in the manifest hold none of the wanted values (the file is
    skipped unread). Other types are not pruned: string bounds are truncated and need care to compare."""
    for key_field in key_fields:
        if not isinstance(key_field.field_type, (IntegerType, LongType)):
            continue
        low = (data_file.lower_bounds or {}).get(key_field.field_id)
        high = (data_file.upper_bounds or {}).get(key_field.field_id)
        if low is None or high is None:
            continue
        values = wanted.get_column(key_field.name)
        low_value, high_value = from_bytes(key_field.field_type, low), from_bytes(key_field.field_type, high)
        if not values.is_between(low_value, high_value).any():
            return False
    return True


def _column_name(parquet: pq.ParquetFile, key_field: NestedField) -> str:
    """The file's name for a field: by field id, as readers resolve columns (a renamed column keeps its id)."""
    field_id = str(key_field.field_id).encode()
    for column in parquet.schema_arrow:
        if column.metadata and column.metadata.get(b"PARQUET:field_id") == field_id:
            return column.name
    return key_field.name


def _deleted_positions(table: Table, delete_file: DataFile) -> dict[str, np.ndarray]:
    """{data file path: positions} of one position delete file."""
    if delete_file.content != DataFileContent.POSITION_DELETES or delete_file.file_format != FileFormat.PARQUET:
        raise ValueError(f"only Parquet position delete files are supported, not {delete_file.file_path}")
    with table.io.new_input(delete_file.file_path).open() as stream:
        rows = pq.read_table(stream, columns=["file_path", "pos"])
    low = (delete_file.lower_bounds or {}).get(FILE_PATH_ID)
    if low is not None and low == (delete_file.upper_bounds or {}).get(FILE_PATH_ID):  # about one data file
        return {low.decode(): rows.column("pos").to_numpy()}
    by_path = pl.from_arrow(rows).partition_by("file_path", as_dict=True, include_key=False)  # type: ignore[union-attr]
    return {path: frame.get_column("pos").to_numpy() for (path,), frame in by_path.items()}


# --- commits --------------------------------------------------------------------------------------------------------

def commit_row_delta(table: Table, located: LocatedRows, rows: pa.Table | None,
                     properties: Mapping[str, str] | None = None) -> Committed:
    """One snapshot that deletes the `located` rows by position and appends `rows`; `properties` are set in the same
    catalog commit. `located` must come from this table object's current snapshot."""
    if not supports_position_deletes(table):
        raise ValueError(f"position deletes need an Iceberg format-version 2 table, this is version "
                         f"{table.metadata.format_version}")
    if located.rows and located.snapshot_id != table.metadata.current_snapshot_id:
        raise ConcurrentChangeError(f"rows were located in snapshot {located.snapshot_id}, the table is at "
                                    f"{table.metadata.current_snapshot_id}")
    has_rows = rows is not None and rows.num_rows > 0
    tx = table.transaction()
    if properties:
        tx.set_properties(dict(properties))
    if not located.rows and not has_rows:
        tx.commit_transaction()
        return Committed(table.metadata.current_snapshot_id)
    producer = _RowDelta(tx, table)
    locations = table.location_provider()
    by_file = located.positions.partition_by("file_path", as_dict=True, include_key=False)
    jobs = [(locations.new_data_location(f"{producer.commit_uuid}-deletes-{i:05d}.parquet"), located.data_files[path],
             frame.get_column("pos").to_numpy()) for i, ((path,), frame) in enumerate(by_file.items())]
    written = [path for path, _, _ in jobs]  # named up front: a failed write leaves no file behind unnamed
    try:
        with ThreadPoolExecutor(_WORKERS) as pool:
            delete_files = list(pool.map(lambda job: _write_delete_file(table, *job), jobs))
        for delete_file in delete_files:
            producer.add_delete_file(delete_file)
        if has_rows:
            assert rows is not None
            for data_file in _write_data_files(tx, table, producer, rows):
                written.append(data_file.file_path)
                producer.append_data_file(data_file)
        producer.commit()
    except BaseException:
        _remove(table, written)  # nothing was committed: the files are nobody's
        raise
    _commit(tx, table, written)
    return Committed(producer.snapshot_id, rows_deleted=sum(f.record_count for f in delete_files),
                     delete_files_written=len(delete_files), rows_written=rows.num_rows if rows is not None else 0,
                     data_files_written=len(written) - len(delete_files))


def replace_all(table: Table, pieces: Iterable[pa.Table], properties: Mapping[str, str] | None = None) -> Committed:
    """One snapshot that removes every data and delete file of the current one and holds `pieces` instead.

    The pieces are written as they come, so memory is one piece at a time. Fails with `ConcurrentChangeError` when
    another commit lands first (the pieces may have been read from the snapshot it replaced)."""
    tx = table.transaction()
    if properties:
        tx.set_properties(dict(properties))
    producer = _RowDelta(tx, table, replace_existing=True)
    written: list[DataFile] = []
    try:
        for piece in pieces:
            if piece.num_rows:
                for data_file in _write_data_files(tx, table, producer, piece):
                    written.append(data_file)
                    producer.append_data_file(data_file)
        if written or producer.replaces_files:  # an empty table copied empty: no snapshot, the properties only
            producer.commit()
    except BaseException:
        _remove(table, [f.file_path for f in written])
        raise
    _commit(tx, table, [f.file_path for f in written])
    return Committed(table.metadata.current_snapshot_id, rows_written=sum(f.record_count for f in written),
                     data_files_written=len(written))


def live_pieces(table: Table, rows_per_piece: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The table's live rows (position deletes applied) in pieces of about `rows_per_piece` rows, `columns` only
    when given.

    One data file is read at a time: `scan().to_arrow_batch_reader()` reads every file at once, into memory."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return
    schema = table.schema() if columns is None else table.schema().select(*columns)
    scan = ArrowScan(table.metadata, table.io, schema, AlwaysTrue())
    buffer: list[pa.RecordBatch] = []
    buffered = 0
    for task in table.scan(snapshot_id=snapshot.snapshot_id).plan_files():
        for batch in scan.to_record_batches([task]):
            buffer.append(batch)
            buffered += batch.num_rows
            if buffered >= rows_per_piece:
                yield pa.Table.from_batches(buffer)
                buffer, buffered = [], 0
    if buffered:
        yield pa.Table.from_batches(buffer)


def _commit(tx: Transaction, table: Table, written: list[str]) -> None:
    try:
        tx.commit_transaction()
    except (CommitFailedException, ValidationException):
        # pyiceberg guarantees the commit did not land (it removes its manifests itself): remove ours too. On any
        # other error the outcome is unknown and the files may be in the table, so they stay.
        _remove(table, written)
        raise


def _remove(table: Table, paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):  # not written at all, or already gone
            table.io.delete(path)


def _write_data_files(tx: Transaction, table: Table, producer: _RowDelta, rows: pa.Table) -> Iterator[DataFile]:
    """What `Transaction.append` writes, into this producer (with its counter: file names stay unique)."""
    metadata = tx.table_metadata
    _check_pyarrow_schema_compatible(metadata.schema(), rows.schema, format_version=metadata.format_version)
    yield from _dataframe_to_data_files(table_metadata=metadata, df=rows, io=table.io,
                                        write_uuid=producer.commit_uuid, counter=producer.file_counter)


def _write_delete_file(table: Table, path: str, data_file: DataFile, positions: np.ndarray) -> DataFile:
    """One position delete file about one data file (sorted by position, as the spec asks)."""
    positions = np.unique(positions.astype(np.int64))
    if positions[0] < 0 or positions[-1] >= data_file.record_count:
        raise ValueError(f"positions outside [0, {data_file.record_count}) in {data_file.file_path}")
    rows = pa.table([pa.array(np.full(len(positions), data_file.file_path, dtype=object), pa.string()),
                     pa.array(positions, pa.int64())], schema=_DELETE_ARROW_SCHEMA)
    with table.io.new_output(path).create(overwrite=True) as stream:
        writer = pq.ParquetWriter(stream, schema=_DELETE_ARROW_SCHEMA, **_parquet_options(table.metadata.properties))
        writer.write_table(rows, row_group_size=len(rows))
        writer.close()
        size = stream.tell()
    statistics = data_file_statistics_from_parquet_metadata(
        parquet_metadata=writer.writer.metadata,
        stats_columns=compute_statistics_plan(_DELETE_SCHEMA, _DELETE_METRICS),
        parquet_column_mapping=parquet_path_to_id_mapping(_DELETE_SCHEMA),
    )
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES, file_path=path, file_format=FileFormat.PARQUET,
        partition=data_file.partition, file_size_in_bytes=size, sort_order_id=None, equality_ids=None,
        key_metadata=None, **statistics.to_serialized_dict(),
    )
    delete_file.spec_id = data_file.spec_id  # from_args drops it; a delete file has its data file's spec
    return delete_file


def _parquet_options(properties: Mapping[str, str]) -> dict[str, Any]:
    codec = properties.get(TableProperties.PARQUET_COMPRESSION, TableProperties.PARQUET_COMPRESSION_DEFAULT)
    options: dict[str, Any] = {"compression": "none" if codec == "uncompressed" else codec}
    if (level := properties.get(TableProperties.PARQUET_COMPRESSION_LEVEL)) is not None:
        options["compression_level"] = int(level)
    return options


# --- the snapshot producer ------------------------------------------------------------------------------------------

def _added(snapshot_id: int, data_file: DataFile) -> ManifestEntry:
    # sequence numbers unset: a file added by this snapshot inherits them from its manifest list entry
    return ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=snapshot_id, sequence_number=None,
                                   file_sequence_number=None, data_file=data_file)


class _DeleteManifestWriter(ManifestWriterV2):
    """pyiceberg's v2 manifest writer always writes content=data; delete files go in a content=deletes manifest."""

    def content(self) -> ManifestContent:
        return ManifestContent.DELETES

    @property
    def _meta(self) -> dict[str, str]:
        return {**super()._meta, "content": "deletes"}


class _RowDelta(_SnapshotProducer["_RowDelta"]):
    """Adds data files and position delete files; keeps the parent's manifests as they are (a fast append) or, with
    `replace_existing`, marks every data and delete file of the parent deleted."""

    def __init__(self, tx: Transaction, table: Table, replace_existing: bool = False) -> None:
        super().__init__(operation=Operation.OVERWRITE, transaction=tx, io=table.io)
        self._replace_existing = replace_existing
        self._added_delete_files: list[DataFile] = []
        self.file_counter = itertools.count()

    def add_delete_file(self, delete_file: DataFile) -> _RowDelta:
        if delete_file.content != DataFileContent.POSITION_DELETES:
            raise ValueError(f"not a position delete file: {delete_file.file_path}")
        self._added_delete_files.append(delete_file)
        return self

    @cached_property
    def _parent_manifests(self) -> list[ManifestFile]:
        if self._parent_snapshot_id is None:
            return []
        parent = self._transaction.table_metadata.snapshot_by_id(self._parent_snapshot_id)
        if parent is None:
            raise ValueError(f"snapshot {self._parent_snapshot_id} not found")
        return [m for m in parent.manifests(io=self._io) if m.has_added_files() or m.has_existing_files()]

    @property
    def replaces_files(self) -> bool:
        return bool(self._replaced_entries)

    @cached_property
    def _replaced_entries(self) -> list[tuple[ManifestFile, ManifestEntry]]:
        if not self._replace_existing:
            return []
        return [(manifest, entry) for manifest in self._parent_manifests
                for entry in manifest.fetch_manifest_entry(self._io, discard_deleted=True)]

    def _existing_manifests(self) -> list[ManifestFile]:
        return [] if self._replace_existing else self._parent_manifests

    def _deleted_entries(self) -> list[ManifestEntry]:
        return [entry for _, entry in self._replaced_entries]

    def _manifest_writer(self, spec_id: int, content: ManifestContent) -> ManifestWriter:
        if content == ManifestContent.DATA:
            return self.new_manifest_writer(self.spec(spec_id))
        return _DeleteManifestWriter(spec=self.spec(spec_id), schema=self.schema(),
                                     output_file=self.new_manifest_output(), snapshot_id=self._snapshot_id,
                                     avro_compression=self._compression)

    def _manifests(self) -> list[ManifestFile]:
        manifests = []
        default_spec = self._transaction.table_metadata.default_spec_id
        if self._added_data_files:  # written with the table's current spec
            with self._manifest_writer(default_spec, ManifestContent.DATA) as writer:
                for data_file in self._added_data_files:
                    writer.add(_added(self._snapshot_id, data_file))
            manifests.append(writer.to_manifest_file())
        groups: dict[tuple[int, ManifestContent], list[tuple[ManifestEntryStatus, ManifestEntry | DataFile]]] = {}
        for delete_file in self._added_delete_files:
            groups.setdefault((delete_file.spec_id, ManifestContent.DELETES), []).append(
                (ManifestEntryStatus.ADDED, delete_file))
        for manifest, entry in self._replaced_entries:  # recorded as deleted, as Java does, for readers of history
            groups.setdefault((manifest.partition_spec_id, manifest.content), []).append(
                (ManifestEntryStatus.DELETED, entry))
        for (spec_id, content), items in groups.items():
            with self._manifest_writer(spec_id, content) as writer:
                for status, item in items:
                    if status == ManifestEntryStatus.ADDED:
                        assert isinstance(item, DataFile)
                        writer.add(_added(self._snapshot_id, item))
                    else:
                        assert isinstance(item, ManifestEntry)
                        writer.delete(item)
            manifests.append(writer.to_manifest_file())
        return manifests + self._existing_manifests()

    def _summary(self, snapshot_properties: dict[str, str] = EMPTY_DICT) -> Summary:
        metadata = self._transaction.table_metadata
        removed = [entry.data_file for entry in self._deleted_entries()]
        if self._added_delete_files and not self._added_data_files and not removed:
            self._operation = Operation.DELETE
        elif not self._added_delete_files and not removed:
            self._operation = Operation.APPEND
        else:
            self._operation = Operation.OVERWRITE
        limit = int(metadata.properties.get(TableProperties.WRITE_PARTITION_SUMMARY_LIMIT,
                                            TableProperties.WRITE_PARTITION_SUMMARY_LIMIT_DEFAULT))
        collector = SnapshotSummaryCollector(partition_summary_limit=limit)
        schema, specs = metadata.schema(), metadata.specs()
        for data_file in self._added_data_files:
            collector.add_file(data_file, schema=schema, partition_spec=metadata.spec())
        for delete_file in self._added_delete_files:  # -> added-delete-files, added-position-deletes
            collector.add_file(delete_file, schema=schema, partition_spec=specs[delete_file.spec_id])
        for data_file in removed:  # data and delete files: total-position-deletes goes down with its files
            collector.remove_file(data_file, schema=schema, partition_spec=specs[data_file.spec_id])
        parent = metadata.snapshot_by_id(self._parent_snapshot_id) if self._parent_snapshot_id is not None else None
        return update_snapshot_summaries(
            summary=Summary(operation=self._operation, **collector.build(), **snapshot_properties),
            previous_summary=parent.summary if parent is not None else None,
        )

    def _validate_concurrency(self) -> None:
        """pyiceberg calls this before retrying a commit another one beat: the positions (and, for a replace, the
        rows) were read from the snapshot we started from, so any other commit in between makes ours wrong."""
        window = self._commit_window
        if window is None or window.is_empty():
            return
        raise ConcurrentChangeError(
            f"the table changed while this commit was prepared (from snapshot "
            f"{window.base.snapshot_id if window.base else None} to {window.head.snapshot_id if window.head else None})"
            "; locate the rows again and retry")
