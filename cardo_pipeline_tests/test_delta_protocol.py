"""The hand-written Delta commits (`merge_on_read`) write only tables whose every feature they handle.

Tables are made with the features the commits do not handle, by delta-rs where it can (column mapping, append
only, partitions) and by Spark's Delta where it cannot (row tracking, in-commit timestamps, v2 checkpoints, domain
metadata, clustering, type widening, identity and generated columns, check constraints, vacuum protocol check,
variant, Iceberg compatibility). Each is refused by the hand-written path; the curated apply falls back to delta-rs
MERGE where delta-rs implements every feature, else fails with UnsupportedTableFeaturesError before writing; the
table stays readable by Spark (and by polars where delta-rs reads it), with its rows unchanged.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from cardo_pipeline.curate import merge_on_read, storage
from cardo_pipeline.curate.merge_on_read import (
    DELTA_RS_READER_FEATURES,
    FILE,
    ROW,
    ConcurrentCommitError,
    MergeOnReadTable,
    UnsupportedTableFeaturesError,
    delta_rs_unsupported_features,
    supports,
    table_features,
    unsupported_features,
)
from cardo_pipeline.curate.oracle import replay
from cardo_pipeline.curate.storage import CuratedLocations, CuratedStore
from cardo_pipeline_tests.test_curate_properties import THINGS, Delivery, Source
from cardo_pipeline_tests.test_curate_storage import land_and_apply

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string())])
DV = {"delta.enableDeletionVectors": "true", "delta.enableChangeDataFeed": "true"}


def _delta_rs_table(uri: str, configuration: dict[str, str], *, partition_by: list[str] | None = None,
                    schema: pa.Schema = SCHEMA) -> str:
    for start in (0, 5):  # two files
        ids = list(range(start, start + 5))
        columns = {"id": ids, "name": [f"n{i}" for i in ids]}
        if "ts" in schema.names:
            columns["ts"] = [datetime(2024, 1, 1 + i) for i in ids]
        write_deltalake(uri, pa.table(columns, schema=schema), mode="append", partition_by=partition_by,
                        configuration=configuration if start == 0 else None)
    return uri


def test_a_table_the_local_engine_makes_is_written_by_hand() -> None:
    """What delta-rs lists on every table it makes (variantType, appendOnly, invariants) is allowed unused."""
    assert {"deletionVectors", "changeDataFeed", "appendOnly", "invariants"} <= merge_on_read.HANDLED_WRITER_FEATURES


def test_curated_tables_carry_only_handled_features(tmp_path) -> None:
    source = Source()
    source.insert(1, name="a", amount=None, notes=None)
    _, store = land_and_apply(Delivery(source.events, [source.events]), str(tmp_path), [True])
    for uri in (store.locations.current, store.locations.history):
        table = DeltaTable(uri)
        reader, writer = table_features(table)
        assert {"deletionVectors", "changeDataFeed"} <= writer <= merge_on_read.HANDLED_WRITER_FEATURES
        assert reader <= merge_on_read.HANDLED_READER_FEATURES
        assert supports(table) and unsupported_features(table) == []


@pytest.mark.parametrize(("name", "configuration", "partition_by", "expected", "delta_rs_writes"), [
    ("column_mapping", {"delta.columnMapping.mode": "name"}, None, "columnMapping", True),
    ("append_only", {"delta.appendOnly": "true"}, None, "appendOnly", False),
    ("partitioned", {}, ["name"], "partitioned", True),
])
def test_delta_rs_made_tables_with_unhandled_features_are_refused(tmp_path, name, configuration, partition_by,
                                                                   expected, delta_rs_writes) -> None:
    uri = _delta_rs_table(str(tmp_path / name), {**DV, **configuration}, partition_by=partition_by)
    table = DeltaTable(uri)
    assert not supports(table)
    assert any(feature.startswith(expected) for feature in unsupported_features(table))
    with pytest.raises(UnsupportedTableFeaturesError, match=expected) as refused:
        MergeOnReadTable(table)
    assert uri in str(refused.value)
    assert (delta_rs_unsupported_features(table) == []) == delta_rs_writes
    assert sorted(pl.read_delta(uri)["id"].to_list()) == list(range(10))


def test_timestamp_ntz_is_written_by_hand_and_read_back(tmp_path) -> None:
    schema = pa.schema([*SCHEMA, pa.field("ts", pa.timestamp("us"))])
    uri = _delta_rs_table(str(tmp_path / "ntz"), DV, schema=schema)
    table = MergeOnReadTable(DeltaTable(uri))
    assert "timestampNtz" in table_features(table.table)[1]
    old = table.read(schema, ["id"], pl.DataFrame({"id": [3]}))
    table.commit(old.select(FILE, ROW), pa.table({"id": [3], "name": ["three"], "ts": [datetime(2030, 5, 6, 7, 8)]},
                                                 schema=schema), metadata={})
    rows = pl.read_delta(uri).sort("id")
    assert rows.height == 10 and rows.filter(pl.col("id") == 3).row(0) == (3, "three", datetime(2030, 5, 6, 7, 8))


def test_a_protocol_change_between_read_and_commit_is_not_written_over(tmp_path) -> None:
    uri = _delta_rs_table(str(tmp_path / "t"), DV)
    table = MergeOnReadTable(DeltaTable(uri))
    old = table.read(SCHEMA, ["id"], pl.DataFrame({"id": [1]}))
    DeltaTable(uri).alter.set_table_properties({"delta.appendOnly": "true"})  # another writer, meanwhile
    with pytest.raises(ConcurrentCommitError):  # its commit holds the version this one would take
        table.commit(old.select(FILE, ROW), SCHEMA.empty_table(), metadata={})
    table.table.update_incremental()  # at the new version: refused before anything is written
    version, files = table.version(), sorted((tmp_path / "t").rglob("*"))
    with pytest.raises(UnsupportedTableFeaturesError, match="appendOnly"):
        table.commit(old.select(FILE, ROW), SCHEMA.empty_table(), metadata={})
    assert DeltaTable(uri).version() == version and sorted(pl.read_delta(uri)["id"].to_list()) == list(range(10))
    assert sorted((tmp_path / "t").rglob("*")) == files  # nor any file of it


def _curated_tables(lake: str, configuration: dict[str, str]) -> CuratedLocations:
    locations = CuratedLocations.in_lake(lake, THINGS)
    for uri, schema in ((locations.current, storage.current_schema(THINGS)),
                        (locations.history, storage.history_schema(THINGS))):
        write_deltalake(uri, schema.empty_table(), configuration={**storage.CURATED_CONFIGURATION, **configuration})
    return locations


def _things() -> Source:
    source = Source()
    for i in range(1, 7):
        source.insert(i, name=f"n{i}", amount=None, notes=None)
    return source


@pytest.mark.spark
def test_curated_tables_with_column_mapping_fall_back_to_delta_rs_merge(tmp_path, spark) -> None:
    # Column mapping switched on by Spark (delta-rs 1.6 sets the property without listing the feature in the
    # protocol, and Spark then refuses the table): a table feature the hand-written commits do not handle
    locations = _curated_tables(str(tmp_path), {})
    for uri in (locations.current, locations.history):
        spark.sql(f"ALTER TABLE delta.`{uri}` SET TBLPROPERTIES ('delta.columnMapping.mode' = 'name')")
        assert not supports(DeltaTable(uri)) and delta_rs_unsupported_features(DeltaTable(uri)) == []
        assert "columnMapping" in table_features(DeltaTable(uri))[1]
    source = _things()
    first = list(source.events)
    source.update(2, name="two")
    source.delete(3)
    source.insert(9, name="n9", amount=None, notes=None)
    land_and_apply(Delivery(source.events, [first, source.events[len(first):]]), str(tmp_path), [True, True])
    expected = replay(source.events, THINGS)[0]
    by_spark = spark.read.format("delta").load(locations.current).select(*(c.name for c in THINGS.columns))
    assert sorted(by_spark.toPandas().to_dict("records"), key=lambda r: r["id"]) == expected
    history = spark.read.format("delta").load(locations.history).filter("NOT is_deleted AND is_current")
    assert sorted(r.id for r in history.select("id").collect()) == [r["id"] for r in expected]


def test_curated_tables_no_writer_handles_fail_before_writing(tmp_path) -> None:
    locations = _curated_tables(str(tmp_path), {"delta.appendOnly": "true"})
    versions = [DeltaTable(uri).version() for uri in (locations.current, locations.history)]
    source = _things()
    with pytest.raises(UnsupportedTableFeaturesError, match="appendOnly") as failed:
        land_and_apply(Delivery(source.events, [source.events]), str(tmp_path), [True])
    assert "neither" in str(failed.value) and "/curated/things" in str(failed.value)
    assert [DeltaTable(uri).version() for uri in (locations.current, locations.history)] == versions
    with pytest.raises(UnsupportedTableFeaturesError):
        CuratedStore(THINGS, locations).expire_tombstones(storage.MIN_TOMBSTONE_RETENTION)


# Tables only Spark's Delta makes: (DDL of the columns, table properties, a statement after creating, the feature
# named in the refusal, whether delta-rs MERGE writes it instead)
SPARK_TABLES = {
    "row_tracking": ("id BIGINT, name STRING", {"delta.enableRowTracking": "true"}, None, "rowTracking", False),
    "in_commit_timestamps": ("id BIGINT, name STRING", {"delta.enableInCommitTimestamps": "true"}, None,
                             "inCommitTimestamp", False),
    "v2_checkpoints": ("id BIGINT, name STRING", {"delta.checkpointPolicy": "v2"}, None, "v2Checkpoint", False),
    "domain_metadata": ("id BIGINT, name STRING", {"delta.feature.domainMetadata": "supported"}, None,
                        "domainMetadata", False),
    "type_widening": ("id BIGINT, name STRING, small INT", {"delta.enableTypeWidening": "true"}, None,
                      "typeWidening", False),
    "clustering": ("id BIGINT, name STRING", {}, "CLUSTER BY (id)", "clustering", False),
    "identity": ("id BIGINT, name STRING, serial BIGINT GENERATED ALWAYS AS IDENTITY", {}, None,
                 "identityColumns", False),
    "generated": ("id BIGINT, name STRING, twice BIGINT GENERATED ALWAYS AS (id * 2)", {}, None,
                  "generatedColumns", True),
    "check_constraint": ("id BIGINT, name STRING", {}, "ADD CONSTRAINT positive CHECK (id >= 0)",
                         "checkConstraints", True),
    "vacuum_protocol_check": ("id BIGINT, name STRING", {"delta.feature.vacuumProtocolCheck": "supported"}, None,
                              "vacuumProtocolCheck", False),
    "variant": ("id BIGINT, name STRING, doc VARIANT", {}, None, "variantType", False),
    "iceberg_compat": ("id BIGINT, name STRING", {"delta.enableDeletionVectors": "false",
                                                 "delta.columnMapping.mode": "name",
                                                 "delta.enableIcebergCompatV2": "true"}, None, "icebergCompatV2",
                       False),
}


@pytest.mark.spark
@pytest.mark.parametrize("name", list(SPARK_TABLES))
def test_spark_made_tables_with_unhandled_features_are_refused(tmp_path, spark, name) -> None:
    columns, properties, extra, feature, delta_rs_writes = SPARK_TABLES[name]
    uri = str(tmp_path / name)
    properties = {"delta.enableDeletionVectors": "true", **properties}
    listed = ", ".join(f"'{k}' = '{v}'" for k, v in properties.items())
    cluster = extra if extra and extra.startswith("CLUSTER") else ""
    spark.sql(f"CREATE TABLE delta.`{uri}` ({columns}) USING delta {cluster} TBLPROPERTIES ({listed})")
    if extra and extra.startswith("ADD CONSTRAINT"):
        spark.sql(f"ALTER TABLE delta.`{uri}` {extra}")
    names = [c.split()[0] for c in columns.split(", ") if "GENERATED" not in c]
    values = {"id": "{i}", "name": "'n{i}'", "small": "1", "doc": "parse_json('{{\"k\": {i}}}')"}
    for start in (0, 5):  # two files
        rows = ", ".join("(" + ", ".join(values[n].format(i=i) for n in names) + ")" for i in range(start, start + 5))
        spark.sql(f"INSERT INTO delta.`{uri}` ({', '.join(names)}) VALUES {rows}")
    spark.sql(f"DELETE FROM delta.`{uri}` WHERE id = 4")  # deletion vectors, where the table has them
    expected = [0, 1, 2, 3, 5, 6, 7, 8, 9]

    table = DeltaTable(uri)
    version = table.version()
    refused = unsupported_features(table)
    assert not supports(table)
    assert any(f.startswith(feature) for f in refused), refused
    reader, writer = table_features(table)
    if "deletionVectors" in writer:
        with pytest.raises(UnsupportedTableFeaturesError, match=feature):
            MergeOnReadTable(table)
    assert (delta_rs_unsupported_features(table) == []) == delta_rs_writes
    outcome = "falls back to delta-rs MERGE" if delta_rs_writes else f"fails: {delta_rs_unsupported_features(table)}"
    print(f"\n{name}: reader {sorted(reader)}, writer {sorted(writer)}; merge-on-read refuses {refused}; {outcome}")
    assert DeltaTable(uri).version() == version
    assert sorted(r.id for r in spark.read.format("delta").load(uri).select("id").collect()) == expected
    if reader <= DELTA_RS_READER_FEATURES - {"columnMapping", "variantType"}:  # polars reads it
        assert sorted(pl.read_delta(uri)["id"].to_list()) == expected
