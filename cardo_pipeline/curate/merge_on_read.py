"""Merge-on-read changes to a Delta table: replaced and deleted rows are marked in deletion vectors, new rows are
appended, all in one commit; no data file is rewritten.

A curated batch changes ~1-2% of a large table's rows, spread over nearly every file (most updates fall on
active loans, which are everywhere in a mature book): a copy-on-write MERGE rewrites all of those files, so its
cost grows with the table. Here a batch costs what it changes: the rows it reads (located by a scan of the key
columns) and the rows it writes. Compaction (maintenance) later folds the deletion vectors back into files.

The commit is written as delta-rs would write it, which delta-rs cannot do itself with deletion vectors:
- the table's log is replayed (last checkpoint, then JSON commits) for the add actions of its live files;
- each touched file is removed and added again with its new deletion vector (old and new positions) and its
  statistics marked not tight (`tightBounds` false: its min and max still bound the live rows);
- new rows are written by polars into a staging directory and moved into the table, their add actions carrying
  exact statistics (`_exact_stats`);
- the commit file is created only if absent (a hard link: atomic on POSIX file systems), so a concurrent writer
  loses with `ConcurrentCommitError` instead of overwriting; local and mounted file systems only (object stores
  need a conditional put, which delta-rs's log store has but does not expose: `supports` says no).
delta-rs, polars and DataFusion read the result, and the change data feed shows the marked rows as deletes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, WriterProperties

from cardo_pipeline.curate import deletion_vectors
from cardo_pipeline.ingest.delta_log import load_table

FILE, ROW = "__cardo_file", "__cardo_row"  # where a row read by `read` is: its data file and physical position
CHECKPOINT_EVERY = 100  # commits, as delta-rs does for its own
FEATURE = "deletionVectors"
ENGINE = "cardo-pipeline merge-on-read"
GLOBAL_ROW = "__cardo_global_row"
STAGING = "_cardo_staging"  # new files are written here first (hidden from readers: a leading underscore)
ROWS_PER_FILE = 1_000_000  # new data files hold at most this many rows
# Data files are written uncompressed: every batch scans the key and value columns of the whole table, and snappy's
# decompression was most of that scan (at 10M loans: 1.5x the bytes, the filtered scan 2.8x faster)
DATA_COMPRESSION = "uncompressed"


def writer_properties() -> WriterProperties:
    """For delta-rs writes of a merge-on-read table's data files (compaction, bulk loads): the same layout."""
    return WriterProperties(compression=DATA_COMPRESSION.upper())


def write_data_file(frame: pl.DataFrame, path: Path, *, statistics: bool = True) -> None:
    """One Parquet file of `frame`, in this module's layout, written by polars (columns in parallel).

    Text columns are declared as Arrow string views in the file's Arrow schema, as polars holds them: with the
    default (large strings) polars first copies every string into one contiguous buffer, growing it as it goes,
    which was a third of a batch's write time and half of its page faults (10M loans, 200k changes). The Parquet
    columns are the same UTF-8 byte arrays either way; only the Arrow type readers are offered differs."""
    frame.write_parquet(path, compression=DATA_COMPRESSION, statistics=statistics,
                        arrow_schema=_arrow_schema_with_views(frame.schema))


def _arrow_schema_with_views(schema: pl.Schema) -> pa.Schema:
    arrow = pl.DataFrame(schema=schema).to_arrow().schema
    views = {pa.large_string(): pa.string_view(), pa.string(): pa.string_view(),
             pa.large_binary(): pa.binary_view(), pa.binary(): pa.binary_view()}
    return pa.schema([field.with_type(views.get(field.type, field.type)) for field in arrow])


class ConcurrentCommitError(RuntimeError):
    """Another writer committed the version this commit was built on: nothing of this one is visible."""


def local_root(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


class UnsupportedTableFeaturesError(RuntimeError):
    """A table uses protocol features the writer at hand does not implement: writing it could break the table for
    the engines that do (a commit missing what a feature requires of every writer)."""

    def __init__(self, uri: str, features: list[str], writer: str = "the merge-on-read commits"):
        self.uri, self.features = uri, list(features)
        super().__init__(f"{uri}: {writer} cannot write this table, which uses features it does not handle: "
                         f"{', '.join(features)}")


# The table features the hand-written commits handle; a table with any other reader or writer feature is refused
# (`unsupported_features`). Each is listed for what the commits do with it:
# - deletionVectors: what the commits write (the format of `deletion_vectors`, descriptors in add and remove);
# - changeDataFeed: commits of the current table write its change data file, the history's leave the feed to
#   readers (derived from deletion vectors and new files, as Delta's own deletes with deletion vectors do);
# - appendOnly: listed by delta-rs on every table it creates; only a table with `delta.appendOnly` false (unset)
#   is written: the commits remove files (`unsupported_features` refuses an append-only one);
# - invariants: listed by delta-rs on every table; the commits do not check column invariants, so a table whose
#   schema declares one (`delta.invariants` in a column's metadata) is refused;
# - variantType: listed by delta-rs on every table (reader and writer); the commits write through polars, which
#   has no variant type, so a table with a variant column is refused;
# - timestampNtz: a timestamp_ntz column is a time zone-less timestamp in the table's Arrow schema, which polars
#   writes as Parquet TIMESTAMP(isAdjustedToUTC=false), as the feature requires; statistics carry no time bounds.
# Not handled: columnMapping (files must use physical names, statistics physical keys), rowTracking (row ids and
# commit versions of new files, the row id high-water mark), inCommitTimestamp (a commit timestamp in every
# commitInfo, first), v2Checkpoint (the log replay reads classic checkpoints only; sidecars), domainMetadata,
# clustering, typeWidening (files of older types), identityColumns, generatedColumns, checkConstraints (values
# unchecked), icebergCompatV1/V2 (and the iceberg writer features), vacuumProtocolCheck, collations and anything
# newer: a feature unknown here is refused.
HANDLED_WRITER_FEATURES = frozenset({"deletionVectors", "changeDataFeed", "appendOnly", "invariants", "variantType",
                                     "timestampNtz"})
HANDLED_READER_FEATURES = frozenset({"deletionVectors", "variantType", "timestampNtz"})
# The features delta-rs's own writers (MERGE, DELETE, optimize) check for and implement (its protocol checker):
# where the hand-written path refuses a table with only these, delta-rs MERGE writes it instead.
DELTA_RS_WRITER_FEATURES = frozenset({"appendOnly", "invariants", "checkConstraints", "changeDataFeed",
                                      "generatedColumns", "columnMapping", "deletionVectors", "timestampNtz",
                                      "variantType"})
DELTA_RS_READER_FEATURES = frozenset({"columnMapping", "deletionVectors", "timestampNtz", "variantType"})
# What a legacy protocol (before table features: reader < 3, writer < 7) implies
_LEGACY_WRITER = {2: ("appendOnly", "invariants"), 3: ("checkConstraints",), 4: ("changeDataFeed", "generatedColumns"),
                  5: ("columnMapping",), 6: ("identityColumns",)}
_LEGACY_READER = {2: ("columnMapping",)}


def table_features(table: DeltaTable) -> tuple[set[str], set[str]]:
    """(reader features, writer features) of the table's protocol, legacy versions turned into the features
    they imply; a protocol newer than the table-features one gives a feature of its own name (never handled)."""
    protocol = table.protocol()
    return (_features("minReaderVersion", protocol.min_reader_version, 3, protocol.reader_features, _LEGACY_READER),
            _features("minWriterVersion", protocol.min_writer_version, 7, protocol.writer_features, _LEGACY_WRITER))


def _features(name: str, version: int, features_version: int, listed: list[str] | None,
              legacy: dict[int, tuple[str, ...]]) -> set[str]:
    """One side of a protocol as features: those listed at the table-features version, those a legacy version
    implies below it, a feature of its own name above it."""
    if version == features_version:
        return set(listed or [])
    if version > features_version:
        return {f"{name}={version}"}
    return {f for since, implied in legacy.items() if since <= version for f in implied}


# What a table's properties and schema may put to use, each under a key: a writer implementing a feature may still
# not handle every use of it (the hand-written commits handle none of these; delta-rs all but the first four)
APPEND_ONLY, VARIANT, IDENTITY, TYPE_WIDENING = "appendOnly", "variantType", "identityColumns", "typeWidening"
DELTA_RS_HANDLED_USES = frozenset({"columnMapping", "checkConstraints", "generatedColumns", "invariants",
                                   "partitioned"})


def _uses(table: DeltaTable) -> dict[str, str]:
    """The uses of features in the table's properties and schema, by key, each described."""
    uses: dict[str, str] = {}
    configuration = table.metadata().configuration or {}
    if str(configuration.get("delta.appendOnly", "false")).lower() == "true":
        uses[APPEND_ONLY] = "appendOnly (delta.appendOnly=true: rows cannot be deleted)"
    if str(configuration.get("delta.columnMapping.mode", "none")).lower() != "none":
        uses["columnMapping"] = f"columnMapping (mode {configuration['delta.columnMapping.mode']})"
    if any(name.startswith("delta.constraints.") for name in configuration):
        uses["checkConstraints"] = "checkConstraints (delta.constraints.*)"
    if table.metadata().partition_columns:
        uses["partitioned"] = "partitioned (new files would need partition values)"

    def visit(kind: object, path: str) -> None:
        if kind == "variant":
            uses[VARIANT] = f"variantType (column {path})"
        elif isinstance(kind, dict):
            for field in kind.get("fields", []):
                name = f"{path}.{field['name']}" if path else field["name"]
                for key in field.get("metadata") or {}:
                    if key == "delta.invariants":
                        uses["invariants"] = f"invariants (column {name})"
                    elif key == "delta.generationExpression":
                        uses["generatedColumns"] = f"generatedColumns (column {name})"
                    elif key.startswith("delta.identity."):
                        uses[IDENTITY] = f"identityColumns (column {name})"
                    elif key.startswith("delta.columnMapping."):
                        uses.setdefault("columnMapping", f"columnMapping (column {name})")
                    elif key.startswith("delta.typeChanges"):
                        uses[TYPE_WIDENING] = f"typeWidening (column {name})"
                visit(field["type"], name)
            for part in ("elementType", "keyType", "valueType"):
                if part in kind:
                    visit(kind[part], path)

    visit(json.loads(table.schema().to_json()), "")
    return uses


def unsupported_features(table: DeltaTable, *, reader_handled: frozenset[str] = HANDLED_READER_FEATURES,
                         writer_handled: frozenset[str] = HANDLED_WRITER_FEATURES,
                         uses_handled: frozenset[str] = frozenset()) -> list[str]:
    """The table's features (of its protocol, its properties and its schema) that a writer handling the given
    ones cannot write correctly, sorted; empty when it can. By default, the hand-written commits of this module."""
    reader, writer = table_features(table)
    unsupported = (reader - reader_handled) | (writer - writer_handled)
    unsupported |= {described for key, described in _uses(table).items() if key not in uses_handled}
    return sorted(unsupported)


def delta_rs_unsupported_features(table: DeltaTable) -> list[str]:
    """The table's features delta-rs's writers do not implement (empty: delta-rs MERGE can write it)."""
    return unsupported_features(table, reader_handled=DELTA_RS_READER_FEATURES,
                                writer_handled=DELTA_RS_WRITER_FEATURES, uses_handled=DELTA_RS_HANDLED_USES)


def supports(table: DeltaTable) -> bool:
    """Whether commits can go through this module: a local table with the deletion-vectors feature and no
    feature the commits do not handle (`unsupported_features`)."""
    reader, writer = table_features(table)
    return (local_root(table.table_uri) is not None and FEATURE in writer and FEATURE in reader
            and not unsupported_features(table))


def _json_shape(add: Mapping) -> dict:
    """An add action read from a checkpoint (Arrow maps are lists of pairs) as the JSON log holds it."""
    shaped = {}
    for name, value in add.items():
        if value is None or name == "stats_parsed":
            continue
        if name in ("partitionValues", "tags") and isinstance(value, list):
            value = dict(value)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        shaped[name] = value
    shaped.setdefault("partitionValues", {})
    return shaped


def _vector_id(action: Mapping) -> str | None:
    """The unique id of a file action's deletion vector (None without one): with the path, the file's identity."""
    vector = action.get("deletionVector")
    if not vector:
        return None
    offset = vector.get("offset")
    return f"{vector['storageType']}{vector['pathOrInlineDv']}" + ("" if offset is None else f"@{offset}")


class MergeOnReadTable:
    """A Delta table with deletion vectors, at a version: read rows with their positions, commit changes."""

    def __init__(self, table: DeltaTable):
        root = local_root(table.table_uri)
        reader, writer = table_features(table)
        if root is None or FEATURE not in reader or FEATURE not in writer:
            raise ValueError(f"{table.table_uri}: merge-on-read needs a local table with deletion vectors")
        self.table, self.root = table, root
        self.check_protocol()
        self._files: dict[str, dict] | None = None

    def version(self) -> int:
        return self.table.version()

    def check_protocol(self) -> None:
        """Raise UnsupportedTableFeaturesError unless the table, at the version held, has only features the
        commits handle: run when opened and before each commit, on the version the commit follows (a commit
        only lands on that version: a protocol change after it makes the commit fail as concurrent)."""
        unsupported = unsupported_features(self.table)
        if unsupported:
            raise UnsupportedTableFeaturesError(self.table.table_uri, unsupported)

    def files(self) -> dict[str, dict]:
        """The add action of every live data file, by path, at this version."""
        if self._files is None:
            self._files = self._replay(self.version())
        return self._files

    def _replay(self, version: int) -> dict[str, dict]:
        log = self.root / "_delta_log"
        files: dict[str, dict] = {}
        start = 0
        last = log / "_last_checkpoint"
        if last.exists():
            checkpoint = json.loads(last.read_text())["version"]
            if checkpoint <= version:
                parts = sorted(log.glob(f"{checkpoint:020d}.checkpoint*.parquet"))
                for part in parts:
                    for add in pq.read_table(part, columns=["add"])["add"].to_pylist():
                        if add is not None:
                            files[add["path"]] = _json_shape(add)
                start = checkpoint + 1 if parts else 0
        # A logical file is its path and its deletion vector (the protocol's reconciliation): a commit that marks
        # more rows of a file adds (path, new vector) and removes (path, old vector), in either order (Spark's
        # MERGE writes the add first), so a remove takes out only the entry it names
        live = {(path, _vector_id(add)): add for path, add in files.items()}
        for v in range(start, version + 1):
            with open(log / f"{v:020d}.json") as commit:
                for line in commit:
                    action = json.loads(line)
                    if "add" in action:
                        live[action["add"]["path"], _vector_id(action["add"])] = action["add"]
                    elif "remove" in action:
                        live.pop((action["remove"]["path"], _vector_id(action["remove"])), None)
        return {path: add for (path, _), add in live.items()}

    def read(self, schema: pa.Schema, key: list[str], keys: pl.DataFrame | None) -> pl.DataFrame:
        """The live rows (of `keys` only, when given) in `schema` (its columns only), each with FILE and ROW."""
        files = self.files()
        target = pl.from_arrow(schema.empty_table())
        assert isinstance(target, pl.DataFrame)
        paths = list(files)
        path_type = pl.Enum(paths)  # a file per row costs an index, not a string
        located = target.with_columns(pl.lit(None, path_type).alias(FILE), pl.lit(None, pl.UInt32).alias(ROW))
        if not paths or (keys is not None and keys.is_empty()):
            return located
        counts = [json.loads(files[path].get("stats") or "{}").get("numRecords") for path in paths]
        if None in counts:  # files without statistics (not written by delta-rs): one scan each
            return pl.concat([self._file_rows(path, path_type, target.schema, key, keys) for path in paths])
        # One scan of all files (a third faster than one per file); a row's global index gives its file and
        # position through the files' row counts, and rows marked deleted are dropped after the key filter
        starts = np.cumsum([0, *counts])
        scan = pl.scan_parquet([str(self.root / path) for path in paths], row_index_name=GLOBAL_ROW,
                               schema=target.schema, missing_columns="insert", extra_columns="ignore")
        if keys is not None:
            scan = scan.filter(_key_filter(key, keys))
        frame = scan.collect()
        index = frame[GLOBAL_ROW].to_numpy().astype(np.int64)
        marked = [starts[i] + deletion_vectors.read(str(self.root), files[path].get("deletionVector"))
                  for i, path in enumerate(paths) if files[path].get("deletionVector")]
        live = ~np.isin(index, np.concatenate(marked)) if marked else np.ones(len(index), bool)
        file_index = np.searchsorted(starts, index[live], side="right") - 1
        frame = frame.filter(pl.Series(live)).drop(GLOBAL_ROW).with_columns(
            pl.Series(FILE, paths, dtype=path_type).gather(file_index),
            pl.Series(ROW, index[live] - starts[file_index], dtype=pl.UInt32))
        if keys is not None and len(key) > 1:
            frame = frame.join(keys.unique(), on=key, how="semi")  # the per-column filter is a superset
        return frame

    def _file_rows(self, path: str, path_type: pl.Enum, schema: pl.Schema, key: list[str],
                   keys: pl.DataFrame | None) -> pl.DataFrame:
        scan = self._live_scan(path, self.files()[path])
        if keys is not None:
            scan = scan.filter(_key_filter(key, keys))
        frame = scan.collect()
        return frame.select(
            *(pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
              for name, dtype in schema.items()),
            pl.lit(path, path_type).alias(FILE), ROW)

    def _live_scan(self, path: str, add: Mapping) -> pl.LazyFrame:
        """A data file's rows that its deletion vector does not mark, with their physical positions (ROW)."""
        scan = pl.scan_parquet(self.root / path).with_row_index(ROW)
        deleted = deletion_vectors.read(str(self.root), add.get("deletionVector"))
        if len(deleted):
            scan = scan.filter(~pl.col(ROW).is_in(pl.Series(deleted, dtype=pl.UInt32).implode()))
        return scan

    def commit(self, deleted: pl.DataFrame, rows: pl.DataFrame | pa.Table, *, app_id: str | None = None,
               app_version: int | None = None,
               metadata: Mapping[str, str], change_feed: pa.Table | pl.DataFrame | None = None,
               operation: str = "MERGE") -> int:
        """One commit: the rows at `deleted` (FILE, ROW) marked deleted, `rows` appended, the app transaction
        (when given) moved. Returns the new version.

        `change_feed` (the table's columns and `_change_type`) is this commit's change data, as a MERGE would
        record it (an updated row as update_preimage and update_postimage); without it, readers derive the
        feed from the deletion vectors and new files, an update then reading as a delete and an insert."""
        self.check_protocol()  # before any file is written
        now = int(time.time() * 1000)
        added_rows = len(rows)
        files = self.files()
        actions: list[dict] = []
        vectors = {}
        for (path,), positions in deleted.group_by(FILE):
            add = files[str(path)]
            old = deletion_vectors.read(str(self.root), add.get("deletionVector"))
            vectors[str(path)] = np.union1d(old, positions[ROW].to_numpy().astype(np.int64))
        descriptors = deletion_vectors.write_file(str(self.root), vectors) if vectors else {}
        for path, descriptor in descriptors.items():
            add = files[path]
            remove = {"path": path, "deletionTimestamp": now, "dataChange": True, "extendedFileMetadata": True,
                      "partitionValues": add.get("partitionValues", {}), "size": add["size"]}
            if add.get("deletionVector"):
                remove["deletionVector"] = add["deletionVector"]
            actions.append({"remove": remove})
            actions.append({"add": {**add, "deletionVector": descriptor, "modificationTime": now,
                                    "dataChange": True, "stats": _loose_stats(add.get("stats"))}})
        with ThreadPoolExecutor(max_workers=1) as pool:  # the change data file is written beside the new files
            change_data = (pool.submit(self._write_change_data, change_feed)
                           if change_feed is not None and len(change_feed) else None)
            staged = self._stage(rows) if added_rows else []
            actions += [{"add": {**add, "modificationTime": now}} for add in staged]
            if change_data is not None:
                actions.append({"cdc": change_data.result()})
        if app_id is not None:
            actions.append({"txn": {"appId": app_id, "version": app_version, "lastUpdated": now}})
        actions.append({"commitInfo": {"timestamp": now, "operation": operation, "engineInfo": ENGINE,
                                       "operationParameters": {"mode": "merge-on-read"},
                                       "operationMetrics": {"numDeletionVectorsAdded": str(len(descriptors)),
                                                            "numTargetRowsDeleted": str(deleted.height),
                                                            "numAddedFiles": str(len(staged)),
                                                            "numOutputRows": str(added_rows)},
                                       **metadata}})
        return self._commit(actions)

    def purge(self, min_deleted_share: float = 0.1) -> int:
        """Rewrite each file whose deletion vector marks at least this share of its rows without those rows,
        one commit per file, with dataChange false (change data feed readers and the apply skip it). Returns how
        many files were rewritten. Readers skip marked rows, but still read them: this keeps that bounded."""
        purged = 0
        for path, add in list(self.files().items()):
            vector = add.get("deletionVector")
            records = json.loads(add.get("stats") or "{}").get("numRecords")
            if not vector or not records or vector["cardinality"] < min_deleted_share * records:
                continue
            self.check_protocol()  # before this file's rewrite: the version held moves with each commit
            live = self._live_scan(path, add).drop(ROW).collect()
            now = int(time.time() * 1000)
            actions: list[dict] = [{"remove": {
                "path": path, "deletionTimestamp": now, "dataChange": False, "extendedFileMetadata": True,
                "partitionValues": add.get("partitionValues", {}), "size": add["size"], "deletionVector": vector}}]
            actions += [{"add": {**staged, "modificationTime": now, "dataChange": False}}
                        for staged in (self._stage(live) if live.height else [])]
            actions.append({"commitInfo": {"timestamp": now, "operation": "REORG", "engineInfo": ENGINE,
                                           "operationParameters": {"purge": "deletion vectors"},
                                           "operationMetrics": {"numDeletionVectorsRemoved": "1",
                                                                "numRemovedRows": str(vector["cardinality"])}}})
            self._commit(actions)
            purged += 1
        return purged

    def _commit(self, actions: list[dict]) -> int:
        version = self.version() + 1
        self._write_commit(version, actions)
        self.table.update_incremental()
        if self.table.version() != version:  # others committed after this one: the files are read again
            self._files = None
            return version
        files = self.files()
        for action in actions:
            if "remove" in action:
                files.pop(action["remove"]["path"], None)
        for action in actions:
            if "add" in action:
                files[action["add"]["path"]] = action["add"]
        if version % CHECKPOINT_EVERY == 0:
            self.table.create_checkpoint()
        return version

    def _stage(self, rows: pl.DataFrame | pa.Table) -> list[dict]:
        """Write rows as data files of this table, with their add actions. Written by polars (delta-rs's writer
        needs an Arrow copy of every string first, which cost more than the write) into a staging directory, then
        moved in; the statistics are the exact ones (row count, null counts, integer and date bounds)."""
        frame = pl.from_arrow(rows) if isinstance(rows, pa.Table) else rows
        assert isinstance(frame, pl.DataFrame)
        types = pl.from_arrow(pa.schema(self.table.schema().to_arrow()).empty_table()).schema  # type: ignore[union-attr]
        frame = frame.select(
            (pl.col(name) if frame.schema[name] == dtype else pl.col(name).cast(dtype)) if name in frame.columns
            else pl.lit(None, dtype).alias(name) for name, dtype in types.items())
        staging = self.root / STAGING / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            adds = []
            for start in range(0, frame.height, ROWS_PER_FILE):
                piece = frame.slice(start, ROWS_PER_FILE)
                name = f"part-00000-{uuid.uuid4()}-c000.parquet"
                write_data_file(piece, staging / name)
                os.replace(staging / name, self.root / name)
                adds.append({"path": name, "partitionValues": {}, "size": (self.root / name).stat().st_size,
                             "modificationTime": int(time.time() * 1000), "dataChange": True,
                             "stats": _exact_stats(piece)})
            return adds
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):  # the last one out removes the staging directory
                staging.parent.rmdir()

    def sweep_staging(self, older_than_s: float = 3600.0) -> int:
        """Remove staging directories a crashed batch left (their files are in no version); returns how many."""
        staging = self.root / STAGING
        swept = 0
        for directory in staging.glob("*") if staging.exists() else []:
            if time.time() - directory.stat().st_mtime > older_than_s:
                shutil.rmtree(directory, ignore_errors=True)
                swept += 1
        with contextlib.suppress(OSError):
            staging.rmdir()
        return swept

    def _write_change_data(self, changes: pa.Table | pl.DataFrame) -> dict:
        relative = f"_change_data/cdc-{uuid.uuid4()}.c000.parquet"
        target = self.root / relative
        target.parent.mkdir(exist_ok=True)
        frame = pl.from_arrow(changes) if isinstance(changes, pa.Table) else changes
        assert isinstance(frame, pl.DataFrame)
        # no statistics: readers of change data do not skip files by them, and they cost 40% of the write
        write_data_file(frame, target, statistics=False)
        return {"path": relative, "partitionValues": {}, "size": target.stat().st_size, "dataChange": False}

    def _write_commit(self, version: int, actions: list[dict]) -> None:
        log = self.root / "_delta_log"
        temporary = log / f".tmp-{version:020d}-{uuid.uuid4().hex}.json"
        temporary.write_text("".join(json.dumps(action, separators=(",", ":")) + "\n" for action in actions))
        try:
            os.link(temporary, log / f"{version:020d}.json")  # fails when the version exists: put-if-absent
        except FileExistsError:
            raise ConcurrentCommitError(f"{self.table.table_uri}: version {version} was committed meanwhile") \
                from None
        finally:
            temporary.unlink()


def _key_filter(key: list[str], keys: pl.DataFrame) -> pl.Expr:
    """Rows whose key columns are each among `keys`' values (exact for one column, a superset for more)."""
    return pl.all_horizontal(pl.col(name).is_in(keys[name].unique().implode()) for name in key)


def _exact_stats(frame: pl.DataFrame) -> str:
    """Delta file statistics: row count, null counts of the flat columns, bounds of integer and date columns
    (text, decimal and time bounds are left out: their encodings differ between writers, and a missing bound only
    costs a reader a file it could have skipped)."""
    flat = [name for name, dtype in frame.schema.items() if not dtype.is_nested()]
    bounded = [name for name, dtype in frame.schema.items() if dtype.is_integer() or dtype == pl.Date]
    summary = frame.select(
        *(pl.col(name).null_count().alias(f"n:{name}") for name in flat),
        *(pl.col(name).min().alias(f"min:{name}") for name in bounded),
        *(pl.col(name).max().alias(f"max:{name}") for name in bounded)).row(0, named=True)

    def bounds(kind: str) -> dict:
        values = {name: summary[f"{kind}:{name}"] for name in bounded if summary[f"{kind}:{name}"] is not None}
        return {name: value.isoformat() if hasattr(value, "isoformat") else value for name, value in values.items()}

    return json.dumps({"numRecords": frame.height, "minValues": bounds("min"), "maxValues": bounds("max"),
                       "nullCount": {name: summary[f"n:{name}"] for name in flat}, "tightBounds": True},
                      separators=(",", ":"))


def _loose_stats(stats: str | None) -> str | None:
    """A file's statistics once some of its rows are deleted: still bounds (min, max), no longer tight."""
    if stats is None:
        return None
    parsed = json.loads(stats)
    parsed["tightBounds"] = False
    return json.dumps(parsed, separators=(",", ":"))


def read_live(uri: str, *, version: int | None = None, columns: list[str] | None = None) -> pl.DataFrame | None:
    """Every live row of a Delta table, deletion vectors applied (delta-rs's pyarrow readers refuse tables with
    them; polars reads them), or None when there is no table."""
    if load_table(uri) is None:
        return None
    return pl.read_delta(uri, version=version, columns=columns)


def file_summary(table: DeltaTable) -> dict[str, int]:
    """Live rows (the files' rows less those their deletion vectors mark: delta-rs's count() counts them too),
    data files, rows marked deleted and files carrying deletion vectors (what maintenance purges), from the log
    alone."""
    if not supports(table):
        return {"live_rows": table.count(), "data_files": len(table.file_uris()), "rows_marked_deleted": 0,
                "files_with_deletion_vectors": 0}
    files = MergeOnReadTable(table).files().values()
    marked = [(add.get("deletionVector") or {}).get("cardinality", 0) for add in files]
    records = sum(json.loads(add.get("stats") or "{}").get("numRecords", 0) for add in files)
    return {"live_rows": records - sum(marked), "data_files": len(marked), "rows_marked_deleted": sum(marked),
            "files_with_deletion_vectors": sum(1 for m in marked if m)}
