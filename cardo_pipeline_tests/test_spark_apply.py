"""The Spark engine's apply-changes against the oracle and the local engine: generated deliveries are landed in a
raw Delta table batch by batch and applied with Spark (or by the two engines in turn) after any batch; the curated
tables must hold what a plain replay gives, whichever engine wrote them, and local readers must read what Spark
wrote (deletion vectors included)."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from cardo_pipeline.cdc.arrow_types import raw_arrow_schema
from cardo_pipeline.curate.merge_on_read import MergeOnReadTable, file_summary
from cardo_pipeline.curate.oracle import replay
from cardo_pipeline.curate.storage import (
    RAW_VERSION_APP_ID,
    CuratedLocations,
    CuratedStore,
    current_schema,
    history_schema,
)
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.spark import apply as spark_apply
from cardo_pipeline.spark.apply import LOCAL_FEATURES, apply_with_spark, curated_rows_with_spark
from cardo_pipeline.tables import TABLES_BY_NAME, SourceTable
from cardo_pipeline_tests.test_curate_properties import (
    EPOCH,
    PROPERTIES,
    THINGS,
    Delivery,
    Source,
    deliveries,
)

pytestmark = pytest.mark.spark

LOANS = TABLES_BY_NAME["loans"]
VERSION_COLUMNS = ["valid_from_lsn", "valid_from_offset", "valid_to_lsn", "valid_to_offset", "is_current"]


def curated_rows(locations: CuratedLocations, table: SourceTable = THINGS) -> tuple[list[dict], list[dict]]:
    """As the local engine's readers (polars) see them."""
    names, key = table.column_names, list(table.primary_key)
    current = pl.read_delta(locations.current).select(names).sort(key).to_dicts()
    history = (pl.read_delta(locations.history).filter(~pl.col("is_deleted")).select([*names, *VERSION_COLUMNS])
               .sort([*key, "valid_from_lsn", "valid_from_offset"]).to_dicts())
    return current, history


def assert_local_protocol(locations: CuratedLocations) -> None:
    for uri in (locations.current, locations.history):
        protocol = DeltaTable(uri).protocol()
        features = set(protocol.writer_features or []) | set(protocol.reader_features or [])
        assert "deletionVectors" in features and features <= LOCAL_FEATURES, features
        assert DeltaTable(uri).metadata().configuration == {"delta.enableChangeDataFeed": "true",
                                                            "delta.enableDeletionVectors": "true"}


def land(raw: OffsetTrackedTable, batch: list[dict], n: int, table: SourceTable = THINGS) -> None:
    raw.append(pa.Table.from_pylist(batch, schema=raw_arrow_schema(table)), f"cardo.public.{table.name}", {0: n}, {})


def applied_after(data: st.DataObject, batches: int, at_most: int) -> set[int]:
    """After which batches to apply (a few: each Spark apply is seconds of jobs)."""
    return data.draw(st.sets(st.integers(0, batches - 1), max_size=at_most), label="apply after batches")


@settings(PROPERTIES, max_examples=6)
@given(delivery=deliveries(), data=st.data())
def test_spark_apply_ends_where_the_oracle_does(spark, delivery: Delivery, data: st.DataObject,
                                                tmp_path_factory) -> None:
    if not delivery.batches:
        return
    lake = str(tmp_path_factory.mktemp("lake"))
    locations = CuratedLocations.in_lake(lake, THINGS)
    raw = OffsetTrackedTable(f"{lake}/raw/things")
    apply_after = applied_after(data, len(delivery.batches), 2)
    for i, batch in enumerate(delivery.batches):
        land(raw, batch, i + 1)
        if i in apply_after:
            apply_with_spark(spark, THINGS, locations)
    report = apply_with_spark(spark, THINGS, locations)
    expected = replay(delivery.delivered, THINGS)
    assert curated_rows_with_spark(spark, THINGS, locations) == expected
    assert curated_rows(locations) == expected
    assert report.raw_version == raw.version() == CuratedStore(THINGS, locations).applied_raw_version()
    assert_local_protocol(locations)


@settings(PROPERTIES, max_examples=4)
@given(delivery=deliveries(), data=st.data())
def test_the_engines_take_turns_on_the_same_tables(spark, delivery: Delivery, data: st.DataObject,
                                                   tmp_path_factory) -> None:
    """Local and Spark apply in any alternation: the end equals the local engine alone, and the oracle."""
    if not delivery.batches:
        return
    n = len(delivery.batches)
    spark_after = applied_after(data, n, 1)  # and the local engine after any other batch, or not
    engines = [("spark" if i in spark_after else data.draw(st.sampled_from([None, "local"]))) for i in range(n)]
    last = data.draw(st.sampled_from(["local", "spark"]))
    turns, alone = (str(tmp_path_factory.mktemp(name)) for name in ("turns", "alone"))
    raws = {lake: OffsetTrackedTable(f"{lake}/raw/things") for lake in (turns, alone)}
    stores = {lake: CuratedStore(THINGS, CuratedLocations.in_lake(lake, THINGS)) for lake in (turns, alone)}

    def apply(engine: str | None) -> None:
        if engine == "spark":
            apply_with_spark(spark, THINGS, stores[turns].locations)
        elif engine == "local":
            stores[turns].apply()

    for i, (batch, engine) in enumerate(zip(delivery.batches, engines, strict=True)):
        for raw in raws.values():
            land(raw, batch, i + 1)
        apply(engine)
        stores[alone].apply()
    apply(last)
    expected = replay(delivery.delivered, THINGS)
    assert curated_rows(stores[turns].locations) == curated_rows(stores[alone].locations) == expected
    assert stores[turns].applied_raw_version() == raws[turns].version()
    if "spark" in [*engines, last]:
        assert curated_rows_with_spark(spark, THINGS, stores[turns].locations) == expected


def toast_story() -> tuple[Source, list[dict], list[dict]]:
    """A first batch of inserts, then updates with the notes unchanged, a delete, a re-insert and a truncate."""
    source = Source()
    for i in range(1, 5):
        source.insert(i, name=f"n{i}", amount=Decimal("1.25") * i, notes=f"note {i}" if i % 2 else None)
    first = list(source.events)
    source.update(1, toast=True, name="a2")
    source.update(2, toast=True, name="b2")  # a TOAST-unchanged null stays null
    source.update(3, notes="changed")
    source.update(3, toast=True, amount=None)
    source.delete(4)
    source.insert(4, name="back", notes=None)
    source.update(4, toast=True, name="back2")  # the re-insert starts a stretch: its null notes hold
    return source, first, source.events[len(first):]


def test_a_batch_applied_again_changes_nothing_and_a_crash_between_the_commits_is_repaired(
        spark, tmp_path, monkeypatch) -> None:
    source, first, rest = toast_story()
    locations = CuratedLocations.in_lake(str(tmp_path), THINGS)
    raw = OffsetTrackedTable(f"{tmp_path}/raw/things")
    land(raw, first, 1)
    assert apply_with_spark(spark, THINGS, locations).inserted == 4
    land(raw, rest, 2)

    def crash(*args, **kwargs):
        raise RuntimeError("killed between the history commit and the current commit")

    monkeypatch.setattr(spark_apply, "_merge_current", crash)
    with pytest.raises(RuntimeError, match="killed between"):
        apply_with_spark(spark, THINGS, locations)
    history, current = DeltaTable(locations.history), DeltaTable(locations.current)
    assert history.transaction_version(RAW_VERSION_APP_ID) == raw.version()
    assert current.transaction_version(RAW_VERSION_APP_ID) == raw.version() - 1
    for name in (spark_apply.TXN_APP_ID, spark_apply.TXN_VERSION):
        assert spark.conf.get(name, None) is None  # unset also when the apply fails
    monkeypatch.undo()

    report = apply_with_spark(spark, THINGS, locations)
    assert report.raw_version_before == raw.version() - 1
    assert report.history_rows_written == 0  # the history's commit was already there: Delta skips it
    assert (report.inserted, report.updated, report.deleted) == (0, 4, 0)  # key 4 deleted and inserted again
    assert DeltaTable(locations.history).version() == history.version()
    assert curated_rows(locations) == replay(source.events, THINGS)
    assert CuratedStore(THINGS, locations).applied_raw_version() == raw.version()

    # the first batch delivered again: both tables commit (the applied raw version moves), no row changes
    land(raw, first, 3)
    versions = {uri: DeltaTable(uri).version() for uri in (locations.current, locations.history)}
    report = apply_with_spark(spark, THINGS, locations)
    assert (report.inserted, report.updated, report.deleted, report.history_rows_written) == (0, 0, 0, 0)
    assert curated_rows(locations) == replay(source.events, THINGS)
    for uri, version in versions.items():
        table = DeltaTable(uri)
        assert table.version() == version + 1
        assert table.transaction_version(RAW_VERSION_APP_ID) == raw.version()
        assert pl.read_delta(uri, version=version).sort(pl.all()).equals(pl.read_delta(uri).sort(pl.all()))
    assert apply_with_spark(spark, THINGS, locations).batches == 0  # nothing new: no commit
    marks = pl.read_delta(locations.history).filter(pl.col("id") == 1).sort("valid_from_lsn")
    assert marks["_cardo_unchanged_toast"].to_list() == [None, '["notes"]']
    assert marks["notes"].to_list() == ["note 1", "note 1"]


# --- local readers, deletion vectors, the loans table -------------------------------------------------------

def loan_row(loan_id: int, **values) -> dict:
    return {"loan_id": loan_id, "borrower_id": loan_id % 7, "product": "consumer", "currency": "EUR",
            "principal": Decimal("1000.00"), "interest_rate": Decimal("0.05250"), "term_months": 24,
            "origination_date": date(2024, 1, 1), "maturity_date": date(2026, 1, 1),
            "outstanding_principal": Decimal("1000.00"), "status": "active", "days_past_due": 0,
            "servicer_notes": f"long servicer note {loan_id} " * 50, "updated_at": EPOCH} | values


class LoanSource:
    """Raw events of the loans table in source order (one partition)."""

    def __init__(self) -> None:
        self.lsn, self.offset, self.events = 1000, 0, []

    def emit(self, op: str, *, before: dict | None = None, after: dict | None = None, toast: bool = False) -> None:
        self.lsn += 1
        stamp = EPOCH + timedelta(seconds=self.lsn)
        self.events.append({
            "op": op, "key": None, "before": before, "after": after,
            "unchanged_toast": ["servicer_notes"] if toast else [], "source_lsn": self.lsn, "source_tx_id": self.lsn,
            "source_ts": stamp, "source_table": "loans", "snapshot": "false", "topic": "cardo.public.loans",
            "partition": 0, "offset": self.offset, "kafka_timestamp": stamp, "ingested_at": stamp})
        self.offset += 1


def test_local_readers_read_what_spark_wrote_with_deletion_vectors(spark, tmp_path) -> None:
    """The loans table (TOASTed servicer notes): 300 inserts, then a few TOAST-unchanged updates and deletes,
    applied with Spark, whose MERGE marks the replaced rows in deletion vectors; polars, DataFusion and the local
    engine's merge-on-read reader see what Spark sees, and the local engine applies the next batch on top."""
    source, live = LoanSource(), {}
    for i in range(1, 301):
        live[i] = loan_row(i)
        source.emit("c", after=live[i])
    first = list(source.events)
    for i in range(10, 300, 20):  # an update with the notes unchanged: they arrive as null
        live[i] = live[i] | {"status": "repaid", "outstanding_principal": Decimal("0.00"),
                             "updated_at": EPOCH + timedelta(days=1)}
        source.emit("u", after=live[i] | {"servicer_notes": None}, toast=True)
    for i in range(5, 300, 50):
        source.emit("d", before={c: None for c in LOANS.column_names} | {"loan_id": i})
        del live[i]
    second = source.events[len(first):]
    locations = CuratedLocations.in_lake(str(tmp_path), LOANS)
    raw = OffsetTrackedTable(f"{tmp_path}/raw/loans")
    land(raw, first, 1, LOANS)
    apply_with_spark(spark, LOANS, locations)
    land(raw, second, 2, LOANS)
    report = apply_with_spark(spark, LOANS, locations)
    assert (report.inserted, report.updated, report.deleted) == (0, 15, 6)
    expected = replay(source.events, LOANS)
    assert expected[0] == sorted(live.values(), key=lambda row: row["loan_id"])
    assert_local_protocol(locations)

    for uri, schema in ((locations.current, current_schema(LOANS)), (locations.history, history_schema(LOANS))):
        table = DeltaTable(uri)
        assert file_summary(table)["files_with_deletion_vectors"] > 0, uri
        assert pa.schema(table.schema().to_arrow()).names == schema.names
        by_spark = pl.from_arrow(spark.read.format("delta").load(uri).toArrow()).sort(pl.all())
        by_polars = pl.read_delta(uri).sort(pl.all())
        by_datafusion = pl.from_arrow(pa.table(QueryBuilder().register("t", table).execute(
            "select * from t").read_all())).sort(pl.all())
        by_merge_on_read = MergeOnReadTable(table).read(schema, list(LOANS.primary_key), None).drop(
            "__cardo_file", "__cardo_row").sort(pl.all())
        assert by_spark.height == (294 if uri == locations.current else 321)
        for frame in (by_polars, by_datafusion, by_merge_on_read):
            assert frame.cast(by_spark.schema).equals(by_spark), uri
    assert curated_rows(locations, LOANS) == curated_rows_with_spark(spark, LOANS, locations) == expected

    # the local engine goes on from there (it marks rows in Spark's deletion vectors' files too)
    source.emit("u", after=live[30] | {"servicer_notes": None, "days_past_due": 31}, toast=True)
    live[30] = live[30] | {"days_past_due": 31}
    source.emit("u", after=live[10] | {"servicer_notes": None, "days_past_due": 3}, toast=True)
    live[10] = live[10] | {"days_past_due": 3}
    land(raw, source.events[-2:], 3, LOANS)
    report = CuratedStore(LOANS, locations).apply()
    assert report.updated == 2
    assert curated_rows(locations, LOANS) == curated_rows_with_spark(spark, LOANS, locations) == replay(
        source.events, LOANS)
    notes = {row["loan_id"]: row["servicer_notes"] for row in curated_rows(locations, LOANS)[0]}
    assert notes[30] == loan_row(30)["servicer_notes"] and notes[10] == loan_row(10)["servicer_notes"]


def test_no_raw_table_no_curated_tables(spark, tmp_path) -> None:
    locations = CuratedLocations.in_lake(str(tmp_path), THINGS)
    report = apply_with_spark(spark, THINGS, locations)
    assert (report.raw_version, report.batches) == (None, 0)
    assert not (tmp_path / "curated").exists()
