"""The Iceberg mirror against real tables: a pyiceberg SQL catalog on SQLite and the curated Delta table it
follows. After every mirror run the Iceberg table holds exactly the Delta table's rows, deletes included; the
deletes are position delete files (no data file rewritten), the live counts subtract them, a compaction folds them
back, and a commit that lands between locating rows and committing their deletes fails the run cleanly."""

from __future__ import annotations

import glob
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from hypothesis import given, settings
from hypothesis import strategies as st
from pyiceberg.table import Table as IcebergTable

import cardo_pipeline.mirror.iceberg as mirror_module
from cardo_pipeline.curate.storage import CuratedLocations, CuratedStore, current_schema
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.mirror import position_deletes
from cardo_pipeline.mirror.iceberg import (
    DELTA_VERSION_PROPERTY,
    IcebergMirror,
    MirrorReport,
    compact_mirror,
    sql_catalog,
)
from cardo_pipeline.mirror.position_deletes import (
    ConcurrentChangeError,
    LocatedRows,
    TableStats,
    commit_row_delta,
    locate,
    table_stats,
)
from cardo_pipeline_tests.test_curate_properties import PROPERTIES, THINGS, Delivery, Source, arrow, deliveries


def _rows(table: pa.Table) -> list[dict]:
    frame = pl.from_arrow(table.cast(current_schema(THINGS)))
    return frame.sort("id").to_dicts()


def delta_rows(uri: str) -> list[dict]:
    return _rows(pl.read_delta(uri).to_arrow())


def iceberg_rows(mirror: IcebergMirror) -> list[dict]:
    return _rows(mirror.iceberg_table().scan().to_arrow())


class Lake:
    def __init__(self, root: str):
        self.raw = OffsetTrackedTable(f"{root}/raw/things")
        self.store = CuratedStore(THINGS, CuratedLocations.in_lake(root, THINGS))
        self.mirror = IcebergMirror(sql_catalog(f"sqlite:///{root}/iceberg/catalog.db", f"{root}/iceberg/warehouse"),
                                    "curated.things", self.store.locations.current, THINGS, current_schema(THINGS))
        self.batches = 0

    def land_and_apply(self, events: list[dict]) -> None:
        self.batches += 1
        self.raw.append(arrow(events), "cardo.public.things", {0: self.batches}, {})
        self.store.apply()


def test_first_run_copies_then_runs_apply_changes_and_deletes(tmp_path) -> None:
    lake = Lake(str(tmp_path))
    source = Source()
    for i in range(1, 6):
        source.insert(i, name=f"n{i}", amount=None, notes=None)
    lake.land_and_apply(source.events)
    first = lake.mirror.sync()
    assert first.full_copy and first.rows == 5 and first.delta_version_before is None
    assert iceberg_rows(lake.mirror) == delta_rows(lake.store.locations.current)

    done = len(source.events)
    source.update(2, name="two")
    source.delete(3)
    source.insert(6, name="n6", amount=None, notes="six")
    lake.land_and_apply(source.events[done:])
    second = lake.mirror.sync()
    assert not second.full_copy and (second.keys_changed, second.rows_appended, second.rows) == (3, 2, 5)
    assert iceberg_rows(lake.mirror) == delta_rows(lake.store.locations.current)
    assert {r["id"] for r in iceberg_rows(lake.mirror)} == {1, 2, 4, 5, 6}

    third = lake.mirror.sync()  # nothing new in Delta: nothing to do
    assert third.snapshot_id == second.snapshot_id or third.keys_changed == 0
    assert third.delta_version == second.delta_version


@settings(PROPERTIES, max_examples=20)
@given(delivery=deliveries(), data=st.data())
def test_iceberg_follows_delta_whatever_the_batches(delivery: Delivery, data: st.DataObject,
                                                     tmp_path_factory) -> None:
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    for batch in delivery.batches:
        lake.land_and_apply(batch)
        if data.draw(st.booleans()):
            assert_mirrors_delta(lake, lake.mirror.sync())
    if delivery.batches:
        assert_mirrors_delta(lake, lake.mirror.sync())


# --- merge-on-read: rows deleted by position ------------------------------------------------------------------------

def snapshot_entries(iceberg: IcebergTable) -> list[dict]:
    """The current snapshot's own manifest entries: status 1 added, 2 deleted; content 0 data, 1 position deletes."""
    snapshot = iceberg.current_snapshot()
    assert snapshot is not None
    entries = iceberg.inspect.entries().to_pylist()
    return [{"status": e["status"], "content": e["data_file"]["content"], "path": e["data_file"]["file_path"]}
            for e in entries if e["snapshot_id"] == snapshot.snapshot_id]


def data_files(iceberg: IcebergTable) -> set[str]:
    return set(iceberg.inspect.data_files().column("file_path").to_pylist())


def assert_mirrors_delta(lake: Lake, report: MirrorReport | None = None) -> None:
    expected = delta_rows(lake.store.locations.current)
    iceberg = lake.mirror.iceberg_table()
    assert iceberg_rows(lake.mirror) == expected
    assert table_stats(iceberg).live_rows == len(expected) == iceberg.scan().count()
    if report is not None:
        assert report.rows == len(expected)
    assert lake.mirror.mirrored_version(iceberg) == DeltaTable(lake.store.locations.current).version()


def changed_ids(lake: Lake, source: Source, start: int, *, write: list[int], delete: list[int],
                insert: list[int]) -> int:
    """Updates `write`, deletes `delete`, (re-)inserts `insert`; lands and applies them; returns the events' end."""
    for id in write:
        source.update(id, name=f"w{start}-{id}")
    for id in delete:
        source.delete(id)
    for id in insert:
        source.insert(id, name=f"i{start}-{id}", amount=None, notes=f"note {id}")
    lake.land_and_apply(source.events[start:])
    return len(source.events)


def loaded_lake(root: str, ids: range) -> tuple[Lake, Source]:
    lake, source = Lake(root), Source()
    for id in ids:
        source.insert(id, name=f"n{id}", amount=None, notes=None)
    lake.land_and_apply(source.events)
    assert lake.mirror.sync().full_copy
    return lake, source


def test_incremental_syncs_delete_by_position_and_rewrite_no_data_file(tmp_path) -> None:
    lake, source = loaded_lake(str(tmp_path), range(1, 41))
    assert lake.mirror.iceberg_table().metadata.format_version == 2
    done = len(source.events)
    batches = [dict(write=[1, 2, 3], delete=[4, 5], insert=[41, 42]),
               dict(write=[2, 41], delete=[1, 6], insert=[4, 43]),  # 4 comes back, 41 changes again
               dict(write=[4, 42], delete=[2, 43], insert=[1, 5])]
    for batch in batches:
        before = lake.mirror.iceberg_table()
        data_before, deletes_before = data_files(before), table_stats(before).position_deletes
        done = changed_ids(lake, source, done, **batch)
        report = lake.mirror.sync()
        assert_mirrors_delta(lake, report)
        after = lake.mirror.iceberg_table()
        existing = len(batch["write"]) + len(batch["delete"])  # the keys with a row in the mirror before
        assert not report.full_copy and report.keys_changed == existing + len(batch["insert"])
        assert report.rows_deleted_by_position == existing and report.delete_files_written >= 1
        entries = snapshot_entries(after)
        assert {e["status"] for e in entries} == {1}  # only additions: nothing removed, nothing rewritten
        assert sum(e["content"] == 1 for e in entries) == report.delete_files_written
        assert sum(e["content"] == 0 for e in entries) == 1  # the upserts' file
        assert data_before < data_files(after)
        summary = after.current_snapshot().summary
        assert int(summary["added-position-deletes"]) == existing
        assert table_stats(after).position_deletes == deletes_before + existing
        assert report.position_deletes == table_stats(after).position_deletes
        assert report.delete_files == len(after.inspect.delete_files()) > 0


def test_locate_skips_rows_already_deleted_and_handles_composite_keys(tmp_path) -> None:
    catalog = sql_catalog(f"sqlite:///{tmp_path}/catalog.db", tmp_path / "warehouse")
    catalog.create_namespace("t")
    schema = pa.schema([("a", pa.int64()), ("b", pa.string()), ("v", pa.int64())])
    table = catalog.create_table("t.pairs", schema=schema)
    rows = pa.table({"a": [1, 1, 2, 2, 3], "b": ["x", "y", "x", "y", "x"], "v": [0, 1, 2, 3, 4]}, schema=schema)
    table.append(rows)
    keys = pa.table({"a": [1, 2, 9], "b": ["y", "x", "x"]})
    located = locate(table, keys)
    assert sorted(located.positions.get_column("pos").to_list()) == [1, 2]  # (9, x) is nowhere
    new = pa.table({"a": [1], "b": ["y"], "v": [10]}, schema=schema)
    committed = commit_row_delta(table, located, new, {"p": "1"})
    assert (committed.rows_deleted, committed.delete_files_written) == (2, 1)
    table = catalog.load_table("t.pairs")
    assert sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["v"]) == [
        {"a": 1, "b": "x", "v": 0}, {"a": 2, "b": "y", "v": 3}, {"a": 3, "b": "x", "v": 4}, {"a": 1, "b": "y", "v": 10}]
    assert table.properties["p"] == "1" and table_stats(table).live_rows == 4
    again = locate(table, keys)  # the deleted rows are not found again: only (1, y)'s new row, in the new file
    assert again.rows == 1 and again.positions.get_column("file_path")[0] not in located.data_files


def test_compaction_folds_the_delete_files_back_and_keeps_the_rows(tmp_path) -> None:
    lake, source = loaded_lake(str(tmp_path), range(1, 21))
    done = changed_ids(lake, source, len(source.events), write=[1], delete=[], insert=[])
    lake.mirror.sync()
    quiet = compact_mirror(lake.mirror.iceberg_table())  # 1 of 21 rows deleted: under 10%, one delete file
    assert not quiet.compacted and quiet.delete_files_before == 1
    done = changed_ids(lake, source, done, write=[2, 3], delete=[4], insert=[21])
    lake.mirror.sync()
    iceberg = lake.mirror.iceberg_table()
    version, before = lake.mirror.mirrored_version(iceberg), table_stats(iceberg)
    assert before.deleted_share >= 0.1

    report = compact_mirror(iceberg)
    assert report.compacted and report.rows == before.live_rows == 20
    assert (report.position_deletes_before, report.delete_files_before) == (before.position_deletes,
                                                                           before.delete_files)
    iceberg = lake.mirror.iceberg_table()
    assert len(iceberg.inspect.delete_files()) == 0 and len(iceberg.inspect.data_files()) == report.data_files_after
    assert table_stats(iceberg) == TableStats(physical_rows=20, position_deletes=0,
                                              data_files=report.data_files_after, delete_files=0)
    assert {e["status"] for e in snapshot_entries(iceberg)} == {1, 2}  # all old files marked deleted
    assert lake.mirror.mirrored_version(iceberg) == version
    assert_mirrors_delta(lake)

    changed_ids(lake, source, done, write=[5], delete=[6], insert=[4])  # and the mirror carries on
    assert_mirrors_delta(lake, lake.mirror.sync())


def test_a_commit_between_locating_and_committing_fails_the_sync_cleanly(tmp_path, monkeypatch) -> None:
    lake, source = loaded_lake(str(tmp_path), range(1, 11))
    done = changed_ids(lake, source, len(source.events), write=[1], delete=[2], insert=[])
    lake.mirror.sync()
    changed_ids(lake, source, done, write=[3], delete=[4], insert=[11])
    mirrored_before, version_before = iceberg_rows(lake.mirror), lake.mirror.mirrored_version()
    on_disk: dict[str, set[str]] = {}

    def locate_then_compact(table: IcebergTable, keys: pa.Table) -> LocatedRows:
        located = position_deletes.locate(table, keys)
        other = lake.mirror.catalog.load_table(lake.mirror.identifier)  # the maintenance job, meanwhile
        assert compact_mirror(other, min_deleted_share=0.0).compacted
        on_disk["files"] = set(glob.glob(f"{tmp_path}/iceberg/warehouse/**/*.parquet", recursive=True))
        return located

    monkeypatch.setattr(mirror_module, "locate", locate_then_compact)
    with pytest.raises(ConcurrentChangeError):
        lake.mirror.sync()
    iceberg = lake.mirror.iceberg_table()
    assert iceberg_rows(lake.mirror) == mirrored_before  # the compaction's rows, none of the sync's
    assert lake.mirror.mirrored_version(iceberg) == version_before
    assert set(glob.glob(f"{tmp_path}/iceberg/warehouse/**/*.parquet", recursive=True)) == on_disk["files"]

    monkeypatch.undo()
    assert_mirrors_delta(lake, lake.mirror.sync())  # the next run does it again


def test_a_full_copy_replaces_the_delete_files_too(tmp_path) -> None:
    lake, source = loaded_lake(str(tmp_path), range(1, 11))
    changed_ids(lake, source, len(source.events), write=[1, 2], delete=[3], insert=[])
    lake.mirror.sync()
    assert table_stats(lake.mirror.iceberg_table()).delete_files > 0
    # as when the feed no longer reaches back to the version mirrored
    lake.mirror.iceberg_table().transaction().remove_properties(DELTA_VERSION_PROPERTY).commit_transaction()
    report = lake.mirror.sync()
    assert report.full_copy and report.rows == 9
    iceberg = lake.mirror.iceberg_table()
    assert table_stats(iceberg) == TableStats(9, 0, len(iceberg.inspect.data_files()), 0)
    assert_mirrors_delta(lake, report)


def test_a_format_version_1_table_is_still_mirrored_copy_on_write(tmp_path) -> None:
    lake, source = Lake(str(tmp_path)), Source()
    lake.mirror.catalog.create_namespace("curated")
    lake.mirror.catalog.create_table(lake.mirror.identifier, schema=lake.mirror.schema,
                                     properties={"format-version": "1"})
    for id in range(1, 6):
        source.insert(id, name=f"n{id}", amount=None, notes=None)
    lake.land_and_apply(source.events)
    assert_mirrors_delta(lake, lake.mirror.sync())
    files_before = data_files(lake.mirror.iceberg_table())
    changed_ids(lake, source, len(source.events), write=[1], delete=[2], insert=[6])
    report = lake.mirror.sync()
    assert_mirrors_delta(lake, report)
    iceberg = lake.mirror.iceberg_table()
    assert iceberg.metadata.format_version == 1 and report.rows_deleted_by_position == 0
    assert len(iceberg.inspect.delete_files()) == 0
    assert not files_before & data_files(iceberg)  # the file holding 1 and 2 was rewritten


def test_the_maintenance_job_compacts_a_mirror_whose_rows_are_deleted_a_tenth(tmp_path, monkeypatch) -> None:
    import cardo_pipeline.defs.maintenance.jobs as jobs
    from cardo_pipeline.defs.resources import IcebergResource, LakeResource

    monkeypatch.setattr(jobs, "SOURCE_TABLES", (THINGS,))
    lake, source = loaded_lake(str(tmp_path), range(1, 11))
    changed_ids(lake, source, len(source.events), write=[1, 2], delete=[3], insert=[])
    lake.mirror.sync()
    before = table_stats(lake.mirror.iceberg_table())
    assert before.deleted_share >= 0.1
    resources = {"lake": LakeResource(root=str(tmp_path)),
                 "iceberg": IcebergResource(catalog_uri=f"sqlite:///{tmp_path}/iceberg/catalog.db",
                                            warehouse=str(tmp_path / "iceberg" / "warehouse"))}
    result = jobs.table_maintenance.execute_in_process(resources=resources)
    [observed] = [e.asset_observation_data.asset_observation for e in result.get_asset_observation_events()
                  if e.asset_observation_data.asset_observation.asset_key.to_user_string() == "iceberg/things"]
    metadata = {k: v.value for k, v in observed.metadata.items()}
    assert metadata["maintenance/compacted"] is True
    assert metadata["maintenance/position_deletes_before"] == before.position_deletes == 3
    assert table_stats(lake.mirror.iceberg_table()) == TableStats(9, 0, 1, 0)
    assert iceberg_rows(lake.mirror) == delta_rows(lake.store.locations.current)
    report = lake.mirror.sync()  # the Delta tables' compaction is versions without changes: only the property moves
    assert (report.keys_changed, report.delete_files_written) == (0, 0)
    assert_mirrors_delta(lake, report)


def test_the_comparison_finds_rows_missing_stray_or_different_in_the_mirror(tmp_path) -> None:
    from cardo_pipeline.mirror.compare import compare_mirror

    lake = Lake(str(tmp_path))
    source = Source()
    for i in range(1, 5):
        source.insert(i, name=f"n{i}", amount=None, notes="long notes" if i % 2 else None)
    lake.land_and_apply(source.events)
    lake.mirror.sync()
    agreed = compare_mirror(lake.mirror)
    assert agreed.passed and agreed.delta_rows == agreed.iceberg_rows == 4

    iceberg = lake.mirror.iceberg_table()
    rows = iceberg.scan().to_arrow()
    changed = rows.filter(pa.compute.equal(rows["id"], 2)).set_column(
        rows.schema.get_field_index("name"), "name", pa.array(["tampered"], rows.schema.field("name").type))
    stray = rows.filter(pa.compute.equal(rows["id"], 1)).set_column(
        0, "id", pa.array([99], rows.schema.field("id").type))
    with iceberg.transaction() as tx:  # id 3 goes, id 2 changes, id 99 appears
        tx.delete("id IN (2, 3)")
        tx.append(pa.concat_tables([changed, stray]))
    found = compare_mirror(lake.mirror)
    assert not found.passed
    assert (found.only_in_delta, found.only_in_iceberg, found.differing) == (1, 1, 1)
    assert {(s["problem"], s["id"]) for s in found.samples} == {("only in delta", 3), ("only in iceberg", 99),
                                                                ("differs", 2)}


def test_duckdb_reads_the_curated_delta_table_and_its_mirror_as_polars_and_pyiceberg_do(tmp_path) -> None:
    """The marts' readers: DuckDB's delta extension applies the deletion vectors this project writes, its iceberg
    extension the mirror's position deletes (both from the duckdb-ext-* wheels, offline)."""
    from cardo_pipeline.marts.duckdb import connect

    lake, source = loaded_lake(str(tmp_path), range(1, 41))
    done = len(source.events)
    done = changed_ids(lake, source, done, write=[1, 2, 3], delete=[4, 5], insert=[41, 42])
    changed_ids(lake, source, done, write=[2, 41], delete=[1, 6], insert=[4, 43])
    lake.mirror.sync()
    current = lake.store.locations.current
    log = "".join(Path(f).read_text() for f in sorted(glob.glob(f"{current}/_delta_log/*.json")))
    assert '"deletionVector":{' in log.replace(" ", "")  # the table really carries deletion vectors
    iceberg = lake.mirror.iceberg_table()
    assert len(iceberg.inspect.delete_files()) > 0  # and its mirror position-delete files

    expected = delta_rows(current)
    assert iceberg_rows(lake.mirror) == expected
    with connect() as conn:
        through_delta = conn.sql(f"select * from delta_scan('{current}')").to_arrow_table()
        through_iceberg = conn.sql(f"select * from iceberg_scan('{iceberg.metadata_location}')").to_arrow_table()
    assert _rows(through_delta.select(current_schema(THINGS).names)) == expected
    assert _rows(through_iceberg.select(current_schema(THINGS).names)) == expected
