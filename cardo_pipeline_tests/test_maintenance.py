"""The maintenance job on real tables: small files compacted, rows unchanged, observations recorded, and the
curated apply and the Iceberg mirror carry on correctly after a compaction (the feed skips its rewrites)."""

from __future__ import annotations

from deltalake import DeltaTable

from cardo_pipeline.curate.oracle import replay
from cardo_pipeline.defs.maintenance.jobs import table_maintenance
from cardo_pipeline.defs.resources import IcebergResource, LakeResource
from cardo_pipeline.tables import SOURCE_TABLES
from cardo_pipeline_tests.test_curate_properties import THINGS, Source
from cardo_pipeline_tests.test_curate_storage import curated_rows
from cardo_pipeline_tests.test_iceberg_mirror import Lake, delta_rows, iceberg_rows


def test_compaction_keeps_rows_and_the_apply_and_mirror_carry_on(tmp_path, monkeypatch) -> None:
    import cardo_pipeline.defs.maintenance.jobs as jobs

    monkeypatch.setattr(jobs, "SOURCE_TABLES", (*SOURCE_TABLES, THINGS))  # the test table is maintained too
    lake = Lake(str(tmp_path))
    source = Source()
    for i in range(1, 31):  # thirty raw commits, thirty curated applies: many small files
        source.insert(i, name=f"n{i}", amount=None, notes=None)
        lake.land_and_apply(source.events[-1:])
    lake.mirror.sync()
    before = {uri: len(DeltaTable(uri).file_uris()) for uri in (lake.raw.uri, lake.store.locations.current)}

    resources = {"lake": LakeResource(root=str(tmp_path)),
                 "iceberg": IcebergResource(catalog_uri=f"sqlite:///{tmp_path}/iceberg/catalog.db",
                                            warehouse=str(tmp_path / "iceberg" / "warehouse"))}
    result = table_maintenance.execute_in_process(resources=resources)
    assert result.success
    observed = {e.asset_observation_data.asset_observation.asset_key.to_user_string()
                for e in result.get_asset_observation_events()}
    assert {"raw/things", "curated/things", "curated/things_history", "iceberg/things"} <= observed
    for uri, files in before.items():
        assert len(DeltaTable(uri).file_uris()) < files
    expected = replay(source.events, THINGS)
    assert curated_rows(lake.store.locations) == expected

    done = len(source.events)
    source.update(5, name="five")
    source.delete(6)
    lake.land_and_apply(source.events[done:])
    report = lake.store.apply()
    assert report.events == 0  # the compaction's rewrite was not read as new raw rows
    assert curated_rows(lake.store.locations) == replay(source.events, THINGS)
    mirrored = lake.mirror.sync()
    assert not mirrored.full_copy and mirrored.keys_changed == 2
    assert iceberg_rows(lake.mirror) == delta_rows(lake.store.locations.current)


def test_maintenance_refuses_a_retention_of_zero_days(tmp_path) -> None:
    resources = {"lake": LakeResource(root=str(tmp_path)), "iceberg": IcebergResource(
        catalog_uri=f"sqlite:///{tmp_path}/iceberg/catalog.db", warehouse=str(tmp_path / "iceberg" / "wh"))}
    result = table_maintenance.execute_in_process(
        resources=resources, raise_on_error=False,
        run_config={"ops": {"maintain_tables": {"config": {"retention_days": 0}}}})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "retention_days" in str(failure.event_specific_data.error)


def test_maintenance_forgets_long_deleted_keys_only_when_a_tombstone_retention_is_set(tmp_path, monkeypatch) -> None:
    import polars as pl

    import cardo_pipeline.defs.maintenance.jobs as jobs

    monkeypatch.setattr(jobs, "SOURCE_TABLES", (*SOURCE_TABLES, THINGS))
    lake = Lake(str(tmp_path))
    source = Source()  # its events are from 2024: their deletes are long past any retention
    for i in (1, 2):
        source.insert(i, name=f"n{i}", amount=None, notes=None)
    source.delete(1)
    lake.land_and_apply(source.events)
    resources = {"lake": LakeResource(root=str(tmp_path)), "iceberg": IcebergResource(
        catalog_uri=f"sqlite:///{tmp_path}/iceberg/catalog.db", warehouse=str(tmp_path / "iceberg" / "wh"))}

    def history_keys() -> list[int]:
        return sorted(pl.read_delta(lake.store.locations.history)["id"].unique().to_list())

    assert table_maintenance.execute_in_process(resources=resources).success
    assert history_keys() == [1, 2]  # unset: tombstones stay as long as the history
    refused = table_maintenance.execute_in_process(
        resources=resources, raise_on_error=False,
        run_config={"ops": {"maintain_tables": {"config": {"tombstone_retention_days": 3}}}})
    assert not refused.success
    [failure] = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "tombstone_retention_days must be at least 7" in str(failure.event_specific_data.error)
    result = table_maintenance.execute_in_process(
        resources=resources, run_config={"ops": {"maintain_tables": {"config": {"tombstone_retention_days": 7}}}})
    assert history_keys() == [2]
    [observed] = [e.asset_observation_data.asset_observation.metadata for e in result.get_asset_observation_events()
                  if e.asset_observation_data.asset_observation.asset_key.to_user_string() == "curated/things_history"
                  and "maintenance/deleted_keys_forgotten" in e.asset_observation_data.asset_observation.metadata]
    assert observed["maintenance/deleted_keys_forgotten"].value == 1
    assert curated_rows(lake.store.locations)[0] == [{"id": 2, "name": "n2", "amount": None, "notes": None}]
