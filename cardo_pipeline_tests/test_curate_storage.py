"""The curated Delta tables against the oracle: generated deliveries are landed in a real raw Delta table batch
by batch, applied incrementally (after any batch), and `curated/things` and `curated/things_history` must hold
what a plain replay gives; a batch delivered again must change nothing, not even the change data feed."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from cardo_pipeline.curate import storage
from cardo_pipeline.curate.merge_on_read import supports
from cardo_pipeline.curate.oracle import replay
from cardo_pipeline.curate.storage import RAW_VERSION_APP_ID, CuratedLocations, CuratedStore
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline_tests.test_curate_properties import PROPERTIES, THINGS, Delivery, Source, arrow, deliveries

NAMES = [c.name for c in THINGS.columns]
VERSION_COLUMNS = ["valid_from_lsn", "valid_from_offset", "valid_to_lsn", "valid_to_offset", "is_current"]


def curated_rows(locations: CuratedLocations) -> tuple[list[dict], list[dict]]:
    current = pl.read_delta(locations.current).select(NAMES).sort("id").to_dicts()
    history = (pl.read_delta(locations.history).filter(~pl.col("is_deleted")).select([*NAMES, *VERSION_COLUMNS])
               .sort(["id", "valid_from_lsn", "valid_from_offset"]).to_dicts())
    return current, history


def land_and_apply(delivery: Delivery, lake: str, apply_after: list[bool]) -> tuple[OffsetTrackedTable, CuratedStore]:
    raw = OffsetTrackedTable(f"{lake}/raw/things")
    store = CuratedStore(THINGS, CuratedLocations.in_lake(lake, THINGS))
    for i, (batch, apply_now) in enumerate(zip(delivery.batches, apply_after, strict=True)):
        raw.append(arrow(batch), "cardo.public.things", {0: i + 1}, {})
        if apply_now:
            store.apply()
    store.apply()
    return raw, store


@settings(PROPERTIES, max_examples=40)
@given(delivery=deliveries(), data=st.data())
def test_curated_delta_tables_end_where_the_oracle_does(delivery: Delivery, data: st.DataObject,
                                                        tmp_path_factory) -> None:
    if not delivery.batches:
        return
    lake = str(tmp_path_factory.mktemp("lake"))
    apply_after = data.draw(st.lists(st.booleans(), min_size=len(delivery.batches), max_size=len(delivery.batches)))
    raw, store = land_and_apply(delivery, lake, apply_after)
    assert curated_rows(store.locations) == replay(delivery.delivered, THINGS)
    assert store.applied_raw_version() == raw.version()

    # The same batch delivered again: both tables commit (the applied raw version moves) and change no row.
    again = data.draw(st.sampled_from(delivery.batches))
    raw.append(arrow(again), "cardo.public.things", {0: len(delivery.batches) + 1}, {})
    report = store.apply()
    assert (report.inserted, report.updated, report.deleted, report.history_rows_written) == (0, 0, 0, 0)
    assert curated_rows(store.locations) == replay(delivery.delivered, THINGS)
    for uri in (store.locations.current, store.locations.history):
        table = DeltaTable(uri)
        assert table.transaction_version(RAW_VERSION_APP_ID) == raw.version()
        assert table.load_cdf(starting_version=table.version()).read_all().num_rows == 0


@settings(PROPERTIES, max_examples=15)
@given(delivery=deliveries(), data=st.data())
def test_tables_without_deletion_vectors_are_merged_copy_on_write_to_the_same_end(
        delivery: Delivery, data: st.DataObject, tmp_path_factory) -> None:
    """Tables made before deletion vectors (or on an object store) go through delta-rs MERGE: same result."""
    if not delivery.batches:
        return
    lake = str(tmp_path_factory.mktemp("lake"))
    locations = CuratedLocations.in_lake(lake, THINGS)
    for uri, schema in ((locations.current, storage.current_schema(THINGS)),
                        (locations.history, storage.history_schema(THINGS))):
        write_deltalake(uri, schema.empty_table(), configuration={"delta.enableChangeDataFeed": "true"})
        assert not supports(DeltaTable(uri))
    apply_after = data.draw(st.lists(st.booleans(), min_size=len(delivery.batches), max_size=len(delivery.batches)))
    raw, store = land_and_apply(delivery, lake, apply_after)
    assert curated_rows(store.locations) == replay(delivery.delivered, THINGS)
    assert store.applied_raw_version() == raw.version()
    assert not supports(DeltaTable(locations.current))


def two_inserts_then_an_update_and_a_delete() -> tuple[Source, list[dict]]:
    """Rows 1 and 2 inserted (the first batch, returned), then row 1 updated and row 2 deleted."""
    source = Source()
    source.insert(1, name="a", amount=None, notes="n1")
    source.insert(2, name="b", amount=None, notes=None)
    first = list(source.events)
    source.update(1, name="a2")
    source.delete(2)
    return source, first


def test_change_data_feed_records_inserts_updates_and_deletes(tmp_path) -> None:
    source, first = two_inserts_then_an_update_and_a_delete()
    rest = source.events[len(first):]
    _, store = land_and_apply(Delivery(source.events, [first, rest]), str(tmp_path), [True, True])
    current = DeltaTable(store.locations.current)
    feed = pl.from_arrow(pa.table(current.load_cdf(starting_version=current.version()).read_all()))
    changes = sorted(zip(feed["_change_type"].to_list(), feed["id"].to_list(), strict=True))
    assert changes == [("delete", 2), ("update_postimage", 1), ("update_preimage", 1)]
    assert curated_rows(store.locations)[0] == [{"id": 1, "name": "a2", "amount": None, "notes": "n1"}]
    # the history's feed comes from its deletion vectors: each closed version as its open image deleted and its
    # closed image inserted, beside the new versions (row 1's update, row 2's delete)
    history = DeltaTable(store.locations.history)
    feed = pl.from_arrow(pa.table(history.load_cdf(starting_version=history.version()).read_all()))
    rows = feed.select("_change_type", "id", "name", "is_current", "is_deleted").sort(pl.all()).rows()
    assert rows == [("delete", 1, "a", True, False), ("delete", 2, "b", True, False),
                    ("insert", 1, "a", False, False), ("insert", 1, "a2", True, False),
                    ("insert", 2, None, True, True), ("insert", 2, "b", False, False)]


def test_history_stores_unchanged_toast_marks_as_json_text_and_resolves_them_across_batches(tmp_path) -> None:
    source = Source()
    source.insert(1, name="a", notes="long note")
    first = list(source.events)
    source.update(1, name="a2", toast=True)  # the notes arrive as the placeholder: the stored note stays
    source.update(1, name="a3", toast=True)
    rest = source.events[len(first):]
    _, store = land_and_apply(Delivery(source.events, [first, rest]), str(tmp_path), [True, True])
    marks = (pl.read_delta(store.locations.history).sort("valid_from_lsn")
             .select("name", "notes", "_cardo_unchanged_toast").rows())
    assert marks == [("a", "long note", None), ("a2", "long note", '["notes"]'), ("a3", "long note", '["notes"]')]
    assert curated_rows(store.locations) == replay(source.events, THINGS)


def test_a_history_from_an_earlier_layout_is_refused_with_how_to_rebuild_it(tmp_path) -> None:
    store = CuratedStore(THINGS, CuratedLocations.in_lake(str(tmp_path), THINGS))
    earlier = storage.history_schema(THINGS)
    earlier = earlier.set(earlier.get_field_index("_cardo_unchanged_toast"),
                          pa.field("_cardo_unchanged_toast", pa.list_(pa.string())))
    write_deltalake(store.locations.history, earlier.empty_table(), configuration=storage.CURATED_CONFIGURATION)
    OffsetTrackedTable(f"{tmp_path}/raw/things").append(arrow([Source().insert(1)]), "cardo.public.things", {0: 1}, {})
    with pytest.raises(storage.OutdatedTableError, match="delete .*things_history.*applies the raw table again"):
        store.apply()
    with pytest.raises(storage.OutdatedTableError, match="delete .*things_history"):  # maintenance too
        store.expire_tombstones(timedelta(days=30))


def test_a_crash_between_the_two_commits_is_repaired_by_the_next_run(tmp_path, monkeypatch) -> None:
    source, first = two_inserts_then_an_update_and_a_delete()
    source.insert(3, name="c", amount=None, notes=None)
    rest = source.events[len(first):]
    raw, store = land_and_apply(Delivery(first, [first]), str(tmp_path), [True])
    raw.append(arrow(rest), "cardo.public.things", {0: 2}, {})

    def crash(*args, **kwargs):
        raise RuntimeError("killed between the history commit and the current commit")

    monkeypatch.setattr(storage._MergeOnReadWriter, "write_current", crash)
    with pytest.raises(RuntimeError, match="killed between"):
        store.apply()
    history, current = DeltaTable(store.locations.history), DeltaTable(store.locations.current)
    assert history.transaction_version(RAW_VERSION_APP_ID) == raw.version()
    assert current.transaction_version(RAW_VERSION_APP_ID) == raw.version() - 1
    assert store.applied_raw_version() == raw.version() - 1

    monkeypatch.undo()
    report = store.apply()
    assert report.history_rows_written == 0 and (report.inserted, report.updated, report.deleted) == (1, 1, 1)
    assert curated_rows(store.locations) == replay(source.events, THINGS)


@pytest.mark.parametrize("merge_on_read", [True, False])
def test_tombstones_expire_only_when_asked_and_then_a_late_insert_counts_as_new(tmp_path, monkeypatch,
                                                                                merge_on_read: bool) -> None:
    if not merge_on_read:  # tables made before deletion vectors: delta-rs deletes the rows
        monkeypatch.setattr(storage, "CURATED_CONFIGURATION", {"delta.enableChangeDataFeed": "true"})
    source = Source()
    source.insert(1, name="a", amount=None, notes=None, lsn=200)
    source.insert(2, name="b", amount=None, notes=None, lsn=201)
    deleted = source.delete(1, lsn=300)
    raw, store = land_and_apply(Delivery(list(source.events), [list(source.events)]), str(tmp_path), [True])
    assert supports(DeltaTable(store.locations.history)) == merge_on_read
    with pytest.raises(ValueError, match="tombstone retention must be at least 7 days"):
        store.expire_tombstones(timedelta(days=6))

    deleted_at = deleted["source_ts"]
    assert store.expire_tombstones(timedelta(days=7), now=deleted_at + timedelta(days=6)) == 0  # still kept
    late = Source()
    late.lsn = 250  # an insert of key 1 older than its delete, arriving now
    late.insert(1, name="late", amount=None, notes=None)
    raw.append(arrow(late.events), "cardo.public.things", {0: 2}, {})
    store.apply()
    assert curated_rows(store.locations)[0] == [{"id": 2, "name": "b", "amount": None, "notes": None}]

    assert store.expire_tombstones(timedelta(days=7), now=deleted_at + timedelta(days=8)) == 1
    history = pl.read_delta(store.locations.history)
    assert sorted(history["id"].unique().to_list()) == [2]  # key 1's versions went with its tombstone
    assert curated_rows(store.locations)[0] == [{"id": 2, "name": "b", "amount": None, "notes": None}]
    again = Source()
    again.lsn = 260
    again.insert(1, name="later", amount=None, notes=None)
    raw.append(arrow(again.events), "cardo.public.things", {0: 3}, {})
    store.apply()
    assert [row["name"] for row in curated_rows(store.locations)[0]] == ["later", "b"]


@pytest.mark.parametrize("row_counts", [True, False])
def test_raw_increments_come_in_whole_versions_with_the_last_version_of_each(tmp_path, monkeypatch,
                                                                             row_counts: bool) -> None:
    source = Source()
    raw = OffsetTrackedTable(f"{tmp_path}/raw/things")
    for i in range(5):  # versions 0..4, 3 events each
        for n in range(3):
            source.insert(10 * i + n)
        raw.append(arrow(source.events[-3:]), "cardo.public.things", {0: 3 * (i + 1)}, {})
    if not row_counts:  # row counts that do not match the files: each row's version comes from its path
        monkeypatch.setattr(storage, "_scan_raw_files", _without_counts(storage._scan_raw_files))
    table = DeltaTable(raw.uri)
    runs = list(storage.raw_increments(table, after=1, max_events=5))
    assert [(rows.height, version) for rows, version in runs] == [(6, 3), (3, 4)]  # whole versions only
    lsns = [lsn for rows, _ in runs for lsn in rows["source_lsn"].to_list()]
    assert lsns == [event["source_lsn"] for event in source.events[6:]]
    assert list(storage.raw_increments(table, after=4, max_events=5)) == []


def _without_counts(scan):
    def scan_by_path(schema, paths, *, with_path):
        return scan(schema, paths, with_path=True) if with_path else scan(schema, paths[:1], with_path=False)
    return scan_by_path
