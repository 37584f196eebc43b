"""The local engine's tables read by the reference readers: Spark's Delta reader against polars for every curated
table (deletion vectors written by the hand-written commits), and Spark's Iceberg runtime against pyiceberg for
the Iceberg mirror of every curated table (position delete files written by hand).

The lake is built once without a stack: simulated servicing changes, encoded as Debezium would, replayed into raw
in several deliveries, each applied to curated (merge-on-read) and mirrored to Iceberg, with deletes of every
table's rows in the later deliveries. A line per table is printed (`-s`) and written to `interop.json` in the
lake's folder: table, rows, deletion-vector files / position-delete files, equal.
"""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from cardo_pipeline.cdc.encode import EnvelopeEncoder
from cardo_pipeline.curate.merge_on_read import file_summary
from cardo_pipeline.curate.storage import CuratedLocations, CuratedStore, current_schema, history_schema
from cardo_pipeline.ingest.replay import replay_file
from cardo_pipeline.mirror.iceberg import IcebergMirror, sql_catalog
from cardo_pipeline.simulator import RowChange, Transaction, simulate
from cardo_pipeline.tables import SOURCE_TABLES

pytestmark = pytest.mark.spark

DELIVERIES = 4
DELETED_SHARE = 0.08  # of each table's keys, deleted over the later deliveries
CURATED = [(table.name, kind) for table in SOURCE_TABLES for kind in ("current", "history")]


class _Collect:
    def __init__(self) -> None:
        self.transactions: list[Transaction] = []

    def write(self, transactions) -> int:
        self.transactions.extend(transactions)
        return sum(len(t.changes) for t in transactions)

    def write_truth(self, rows) -> None:
        pass


def _with_deletes(transactions: list[Transaction], seed: int) -> list[Transaction]:
    """The simulated changes and, spread over the second half of the stream, deletes of a share of every table's
    keys (the simulator deletes only duplicate payments): each deletes the row as it then is."""
    rng = random.Random(seed)
    keys = {table.name: table.primary_key for table in SOURCE_TABLES}
    rows: dict[tuple, dict] = {}
    half = len(transactions) // 2
    out: list[Transaction] = []
    for i, transaction in enumerate(transactions):
        changes = [c for c in transaction.changes if (c.table, *(c.row[k] for k in keys[c.table])) in rows
                   or c.op == "c"]
        for change in changes:
            key = (change.table, *(change.row[k] for k in keys[change.table]))
            if change.op == "d":
                rows.pop(key, None)
            else:
                rows[key] = change.row
        if changes:
            out.append(dataclasses.replace(transaction, changes=tuple(changes)))
        if i >= half and rows and rng.random() < 4 * DELETED_SHARE:
            doomed = rng.sample(sorted(rows, key=str), max(1, len(rows) // 200))
            deletes = tuple(RowChange(key[0], "d", rows.pop(key)) for key in doomed)
            out.append(Transaction(deletes, transaction.committed_at + timedelta(microseconds=1)))
    return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("interop")
    sink = _Collect()
    simulate(sink, loans=120, months=8, seed=11)
    transactions = _with_deletes(sink.transactions, seed=11)
    catalog = sql_catalog(f"sqlite:///{root}/iceberg/catalog.db", root / "iceberg" / "warehouse")
    stores = {t.name: CuratedStore(t, CuratedLocations.in_lake(str(root), t)) for t in SOURCE_TABLES}
    mirrors = {}
    for table in SOURCE_TABLES:
        locations = stores[table.name].locations
        # the history keyed by its version's start: a closed version is a key changed, a new one a key added
        history_table = dataclasses.replace(table, primary_key=(*table.primary_key, "valid_from_lsn",
                                                                "valid_from_offset"))
        mirrors[table.name, "current"] = IcebergMirror(catalog, f"curated.{table.name}", locations.current, table,
                                                       current_schema(table))
        mirrors[table.name, "history"] = IcebergMirror(catalog, f"curated.{table.name}_history", locations.history,
                                                       history_table, history_schema(table))
    encoder = EnvelopeEncoder()
    step = -(-len(transactions) // DELIVERIES)
    reports: dict = {key: [] for key in mirrors}
    for delivery in range(DELIVERIES):
        dump = root / f"delivery-{delivery}.jsonl"
        with open(dump, "wb") as out:
            for message in encoder.encode(transactions[delivery * step:(delivery + 1) * step]):
                out.write((message.value or b"null") + b"\n")
        replay_file(dump, root, batch_lines=2_000)
        for store in stores.values():
            store.apply(max_batch_events=1_500)
        for key, mirror in mirrors.items():
            reports[key].append(mirror.sync())
    return {"root": root, "stores": stores, "mirrors": mirrors, "catalog": catalog, "reports": reports,
            "results": {}}


def _uri(lake: dict, name: str, kind: str) -> str:
    locations = lake["stores"][name].locations
    return locations.current if kind == "current" else locations.history


def _normalised(frame: pl.DataFrame, schema: pa.Schema) -> pl.DataFrame:
    """All columns in the curated schema's types (timestamps as UTC microseconds, decimals at their scale), the
    rows sorted by every column."""
    typed = pl.from_arrow(schema.empty_table()).schema  # type: ignore[union-attr]
    frame = frame.select(*(pl.col(name).cast(dtype) for name, dtype in typed.items()))
    return frame.sort(pl.all(), nulls_last=True)


def _schema(name: str, kind: str) -> pa.Schema:
    table = next(t for t in SOURCE_TABLES if t.name == name)
    return current_schema(table) if kind == "current" else history_schema(table)


def _record(lake: dict, line: dict) -> None:
    lake["results"][line["table"], line["reader"]] = line
    print("\n" + "  ".join(f"{k}={v}" for k, v in line.items()))
    (Path(lake["root"]) / "interop.json").write_text(json.dumps(list(lake["results"].values()), indent=1))


@pytest.mark.parametrize(("name", "kind"), CURATED, ids=[f"{n}_{k}" for n, k in CURATED])
def test_spark_delta_reads_the_rows_polars_reads(lake, spark, name, kind) -> None:
    uri = _uri(lake, name, kind)
    schema = _schema(name, kind)
    summary = file_summary(DeltaTable(uri))
    by_polars = _normalised(pl.read_delta(uri), schema)
    by_spark = _normalised(pl.from_arrow(spark.read.format("delta").load(uri).toArrow()), schema)
    equal = by_spark.equals(by_polars)
    _record(lake, {"table": f"{name}{'' if kind == 'current' else '_history'}", "reader": "spark-delta",
                   "rows": by_polars.height, "data_files": summary["data_files"],
                   "deletion_vector_files": summary["files_with_deletion_vectors"],
                   "rows_marked_deleted": summary["rows_marked_deleted"], "equal": equal})
    assert summary["live_rows"] == by_polars.height > 0
    assert summary["files_with_deletion_vectors"] >= 2, summary  # spread over files
    assert equal


def _delete_files(iceberg) -> int:
    snapshot = iceberg.current_snapshot()
    return sum(1 for manifest in snapshot.manifests(iceberg.io) if manifest.content.name == "DELETES"
               for entry in manifest.fetch_manifest_entry(iceberg.io) if entry.data_file.record_count)


@pytest.mark.parametrize(("name", "kind"), CURATED, ids=[f"{n}_{k}" for n, k in CURATED])
def test_spark_iceberg_reads_the_rows_pyiceberg_reads(lake, spark, name, kind) -> None:
    mirror = lake["mirrors"][name, kind]
    iceberg = mirror.iceberg_table()
    schema = _schema(name, kind)
    delete_files = _delete_files(iceberg)
    deleted_by_position = sum(r.rows_deleted_by_position for r in lake["reports"][name, kind])
    by_pyiceberg = _normalised(pl.from_arrow(iceberg.scan().to_arrow()), schema)
    by_spark = _normalised(pl.from_arrow(spark.read.format("iceberg").load(iceberg.metadata_location).toArrow()),
                           schema)
    by_delta = _normalised(pl.read_delta(_uri(lake, name, kind)), schema)
    equal = by_spark.equals(by_pyiceberg)
    _record(lake, {"table": f"{name}{'' if kind == 'current' else '_history'}", "reader": "spark-iceberg",
                   "rows": by_pyiceberg.height, "position_delete_files": delete_files,
                   "rows_deleted_by_position": deleted_by_position, "equal": equal,
                   "equal_to_delta": by_pyiceberg.equals(by_delta)})
    assert delete_files > 0 and deleted_by_position > 0
    assert equal
    assert by_pyiceberg.equals(by_delta)
