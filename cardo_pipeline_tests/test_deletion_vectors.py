"""Deletion vectors written by us, read by delta-rs, polars and DataFusion: the merge-on-read commit path."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from cardo_pipeline.curate import deletion_vectors, merge_on_read
from cardo_pipeline.curate.merge_on_read import FILE, ROW, ConcurrentCommitError, MergeOnReadTable, file_summary

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string())])
CONFIGURATION = {"delta.enableDeletionVectors": "true", "delta.enableChangeDataFeed": "true"}


def test_z85_is_the_zeromq_encoding():
    assert deletion_vectors.z85_encode(bytes.fromhex("864FD26FB559F75B")) == "HelloWorld"
    assert deletion_vectors.z85_decode("HelloWorld") == bytes.fromhex("864FD26FB559F75B")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64), st.sets(st.integers(0, 2**40), max_size=300))
def test_encodings_round_trip(data, positions):
    assert deletion_vectors.z85_decode(deletion_vectors.z85_encode(data), len(data)) == data
    rows = np.array(sorted(positions), np.int64)
    assert deletion_vectors.deserialize(deletion_vectors.serialize(rows)).tolist() == rows.tolist()


def test_a_stored_vector_is_checked_when_read(tmp_path):
    vectors = {"a.parquet": np.array([1, 5]), "b.parquet": np.array([0])}
    descriptors = deletion_vectors.write_file(str(tmp_path), vectors)
    assert deletion_vectors.read(str(tmp_path), descriptors["a.parquet"]).tolist() == [1, 5]
    assert deletion_vectors.read(str(tmp_path), descriptors["b.parquet"]).tolist() == [0]
    stored = tmp_path / deletion_vectors.file_name(descriptors["b.parquet"])
    data = bytearray(stored.read_bytes())
    data[descriptors["b.parquet"]["offset"] + 6] ^= 0xFF  # a flipped bit inside the second vector
    stored.write_bytes(bytes(data))
    with pytest.raises(deletion_vectors.DeletionVectorError, match="checksum"):
        deletion_vectors.read(str(tmp_path), descriptors["b.parquet"])


def _table(tmp_path, rows: int = 10, files: int = 2) -> str:
    uri = str(tmp_path / "t")
    per_file = rows // files
    for start in range(0, rows, per_file):
        ids = list(range(start, start + per_file))
        write_deltalake(uri, pa.table({"id": ids, "name": [f"n{i}" for i in ids]}, schema=SCHEMA), mode="append",
                        configuration=CONFIGURATION if start == 0 else None)
    return uri


def _ids_seen_by_every_reader(uri: str) -> list[int]:
    by_polars = sorted(pl.read_delta(uri)["id"].to_list())
    table = DeltaTable(uri)
    by_datafusion = sorted(pa.table(QueryBuilder().register("t", table).execute("select id from t").read_all())
                           ["id"].to_pylist())
    assert by_polars == by_datafusion
    assert file_summary(table)["live_rows"] == len(by_polars)
    return by_polars


def test_a_commit_marks_rows_deleted_appends_rows_and_records_its_change_feed(tmp_path):
    uri = _table(tmp_path)
    table = MergeOnReadTable(DeltaTable(uri))
    old = table.read(SCHEMA, ["id"], pl.DataFrame({"id": [2, 7, 9]}))
    assert sorted(old["id"].to_list()) == [2, 7, 9] and old[FILE].n_unique() == 2
    # 2 and 7 are updated (their old rows marked, new ones appended), 9 deleted, 11 inserted
    new_rows = pa.table({"id": [2, 7, 11], "name": ["two", "seven", "eleven"]}, schema=SCHEMA)
    feed = pa.table({"id": [2, 2, 9, 11], "name": ["n2", "two", "n9", "eleven"],
                     "_change_type": ["update_preimage", "update_postimage", "delete", "insert"]})
    version = table.commit(old.select(FILE, ROW), new_rows, app_id="test", app_version=4, metadata={"why": "x"},
                           change_feed=feed)

    assert _ids_seen_by_every_reader(uri) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 11]
    assert merge_on_read.file_summary(DeltaTable(uri)) == {
        "live_rows": 10, "data_files": 3, "rows_marked_deleted": 3, "files_with_deletion_vectors": 2}
    assert pl.read_delta(uri).filter(pl.col("id").is_in([2, 7]))["name"].sort().to_list() == ["seven", "two"]
    delta = DeltaTable(uri)
    assert delta.transaction_version("test") == 4 and delta.version() == version
    changes = pa.table(delta.load_cdf(starting_version=version).read_all())
    assert sorted(zip(changes["_change_type"].to_pylist(), changes["id"].to_pylist(), strict=True)) == [
        ("delete", 9), ("insert", 11), ("update_postimage", 2), ("update_preimage", 2)]

    # Rows marked in an earlier commit stay marked when the same file gets more: 3 goes too.
    again = MergeOnReadTable(DeltaTable(uri))
    assert again.read(SCHEMA, ["id"], pl.DataFrame({"id": [2, 9]}))["name"].to_list() == ["two"]
    again.commit(again.read(SCHEMA, ["id"], pl.DataFrame({"id": [3]})).select(FILE, ROW), SCHEMA.empty_table(),
                 app_id="test", app_version=5, metadata={})
    assert _ids_seen_by_every_reader(uri) == [0, 1, 2, 4, 5, 6, 7, 8, 11]
    # compaction (maintenance) folds the vectors into new files: the same rows
    DeltaTable(uri).optimize.compact()
    assert _ids_seen_by_every_reader(uri) == [0, 1, 2, 4, 5, 6, 7, 8, 11]


def test_text_a_commit_writes_reads_back_the_same_through_every_reader(tmp_path):
    # New files declare their text columns as Arrow string views (polars writes them from its views, without a
    # copy); readers that take the Arrow schema and readers that take the Parquet types must all see the text.
    uri = _table(tmp_path)
    table = MergeOnReadTable(DeltaTable(uri))
    names = ["", "short", "x" * 5000, None, "ümlaut ✓"]
    rows = pa.table({"id": [100, 101, 102, 103, 104], "name": names}, schema=SCHEMA)
    feed = pa.table({"id": [100], "name": ["short"], "_change_type": ["insert"]})
    version = table.commit(pl.DataFrame(schema={FILE: pl.String, ROW: pl.UInt32}), rows, metadata={},
                           change_feed=feed)
    delta = DeltaTable(uri)
    new_file = next(add["path"] for add in MergeOnReadTable(delta).files().values()
                    if add.get("stats") and '"maxValues":{"id":104}' in add["stats"])
    assert pq.ParquetFile(tmp_path / "t" / new_file).schema_arrow.field("name").type == pa.string_view()
    expected = dict(zip(range(100, 105), names, strict=True))

    def by_id(ids, texts) -> dict:
        return {i: t for i, t in zip(ids, texts, strict=True) if i >= 100}

    assert by_id(*pl.read_delta(uri).select("id", "name").to_dict(as_series=False).values()) == expected
    sql = pa.table(QueryBuilder().register("t", delta).execute("select id, name from t").read_all())
    assert by_id(sql["id"].to_pylist(), sql["name"].to_pylist()) == expected
    plain = pq.read_table(tmp_path / "t" / new_file)
    assert by_id(plain["id"].to_pylist(), plain["name"].to_pylist()) == expected
    seen = duckdb.sql(f"select id, name from read_parquet('{tmp_path / 't' / new_file}')").fetchall()
    assert by_id([i for i, _ in seen], [t for _, t in seen]) == expected
    changes = pa.table(delta.load_cdf(starting_version=version).read_all())
    assert changes["name"].to_pylist() == ["short"]
    DeltaTable(uri).optimize.compact()  # delta-rs rewrites them
    assert by_id(*pl.read_delta(uri).select("id", "name").to_dict(as_series=False).values()) == expected


def test_a_second_writer_from_the_same_version_fails_and_changes_nothing(tmp_path):
    uri = _table(tmp_path)
    first, second = MergeOnReadTable(DeltaTable(uri)), MergeOnReadTable(DeltaTable(uri))
    keys = pl.DataFrame({"id": [1]})
    first.commit(first.read(SCHEMA, ["id"], keys).select(FILE, ROW), SCHEMA.empty_table(), app_id="a",
                 app_version=1, metadata={})
    with pytest.raises(ConcurrentCommitError):
        second.commit(second.read(SCHEMA, ["id"], pl.DataFrame({"id": [2]})).select(FILE, ROW),
                      SCHEMA.empty_table(), app_id="a", app_version=1, metadata={})
    assert _ids_seen_by_every_reader(uri) == [0, 2, 3, 4, 5, 6, 7, 8, 9]


def test_the_log_is_checkpointed_and_replayed_from_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(merge_on_read, "CHECKPOINT_EVERY", 3)
    uri = _table(tmp_path)  # versions 0 and 1
    for version_id in (1, 4, 6):
        table = MergeOnReadTable(DeltaTable(uri))
        table.commit(table.read(SCHEMA, ["id"], pl.DataFrame({"id": [version_id]})).select(FILE, ROW),
                     pa.table({"id": [100 + version_id], "name": ["x"]}, schema=SCHEMA), app_id="a",
                     app_version=version_id, metadata={})
    assert (tmp_path / "t" / "_delta_log" / "_last_checkpoint").exists()
    replayed = MergeOnReadTable(DeltaTable(uri))
    assert _ids_seen_by_every_reader(uri) == sorted(replayed.read(SCHEMA, ["id"], None)["id"].to_list())
    assert _ids_seen_by_every_reader(uri) == [0, 2, 3, 5, 7, 8, 9, 101, 104, 106]


def test_tables_without_the_feature_or_off_local_disks_are_not_written_this_way(tmp_path):
    uri = str(tmp_path / "plain")
    write_deltalake(uri, pa.table({"id": [1], "name": ["a"]}, schema=SCHEMA))
    assert not merge_on_read.supports(DeltaTable(uri))
    assert merge_on_read.supports(DeltaTable(_table(tmp_path)))
    assert merge_on_read.local_root("s3://bucket/lake/t") is None


def test_purging_rewrites_files_whose_rows_are_largely_deleted_and_changes_no_row(tmp_path):
    uri = _table(tmp_path, rows=20, files=2)  # ids 0-9 in one file, 10-19 in the other
    table = MergeOnReadTable(DeltaTable(uri))
    table.commit(table.read(SCHEMA, ["id"], pl.DataFrame({"id": [1, 2, 3, 15]})).select(FILE, ROW),
                 SCHEMA.empty_table(), app_id="a", app_version=1, metadata={})
    version = DeltaTable(uri).version()

    assert MergeOnReadTable(DeltaTable(uri)).purge(min_deleted_share=0.2) == 1  # 3 of 10, not 1 of 10
    after = MergeOnReadTable(DeltaTable(uri))
    vectors = [add.get("deletionVector") for add in after.files().values()]
    assert len(vectors) == 2 and sum(v is None for v in vectors) == 1
    assert _ids_seen_by_every_reader(uri) == [0, *range(4, 15), *range(16, 20)]
    delta = DeltaTable(uri)
    assert pa.table(delta.load_cdf(starting_version=version + 1).read_all()).num_rows == 0  # no data change


def test_staging_left_by_a_crash_is_swept(tmp_path):
    uri = _table(tmp_path)
    left = tmp_path / "t" / merge_on_read.STAGING / "crashed"
    left.mkdir(parents=True)
    (left / "part-0.parquet").write_bytes(b"x")
    table = MergeOnReadTable(DeltaTable(uri))
    assert table.sweep_staging(older_than_s=3600) == 0 and left.exists()  # may be a batch at work
    assert table.sweep_staging(older_than_s=0) == 1 and not left.parent.exists()
    assert _ids_seen_by_every_reader(uri) == list(range(10))
