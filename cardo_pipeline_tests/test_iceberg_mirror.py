"""The Iceberg mirror against real tables: a pyiceberg SQL catalog on SQLite and the curated Delta table it
follows. After every mirror run the Iceberg table holds exactly the Delta table's rows, deletes included."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cardo_pipeline.curate.storage import CuratedLocations, CuratedStore, current_schema
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.mirror.iceberg import IcebergMirror, sql_catalog
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
            lake.mirror.sync()
            assert iceberg_rows(lake.mirror) == delta_rows(lake.store.locations.current)
    if delivery.batches:
        lake.mirror.sync()
        assert iceberg_rows(lake.mirror) == delta_rows(lake.store.locations.current)
