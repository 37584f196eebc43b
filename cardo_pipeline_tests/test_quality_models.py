"""The Pandera models and the chunked validator on small inline tables (no services): clean tables pass, each kind of
bad value is caught with its column, rule and row, chunking changes nothing (keys duplicated across chunks
included), and every table of the graph has a model."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import polars as pl
import pytest

from cardo_pipeline.cdc.models import dead_letter_model, raw_images_model, raw_model
from cardo_pipeline.curate.apply import LSN, OFFSET, SOURCE_TS
from cardo_pipeline.curate.models import current_model, history_model, history_values_model
from cardo_pipeline.curate.storage import current_schema, history_schema
from cardo_pipeline.defs.quality.pandera_checks import markdown_table
from cardo_pipeline.mirror.models import mirror_model
from cardo_pipeline.quality.models import Severity, polars_dtypes, severity_of
from cardo_pipeline.quality.validate import LazySource, validate
from cardo_pipeline.tables import SOURCE_TABLES, TABLES_BY_NAME

LOANS = TABLES_BY_NAME["loans"]
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def loan(loan_id: int, **values) -> dict:
    return {"loan_id": loan_id, "borrower_id": 1, "product": "mortgage", "currency": "EUR",
            "principal": Decimal("100000.00"), "interest_rate": Decimal("0.03500"), "term_months": 240,
            "origination_date": date(2020, 1, 1), "maturity_date": date(2040, 1, 1),
            "outstanding_principal": Decimal("90000.00"), "status": "active", "days_past_due": 0,
            "servicer_notes": None, "updated_at": T0, LSN: 100 + loan_id, OFFSET: loan_id, SOURCE_TS: T0} | values


def current_loans(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=polars_dtypes(current_schema(LOANS)), orient="row")


def history_loans(*rows: dict) -> pl.DataFrame:
    schema = polars_dtypes(history_schema(LOANS))
    return pl.DataFrame([{name: row.get(name) for name in schema} for row in rows], schema=schema)


def version(loan_id: int, valid_from: int, valid_to: int | None, **values) -> dict:
    return loan(loan_id, **values) | {
        "valid_from_lsn": valid_from, "valid_from_offset": 0, "valid_to_lsn": valid_to,
        "valid_to_offset": None if valid_to is None else 0, "valid_from_ts": T0, "valid_to_ts": None,
        "is_current": valid_to is None, "is_deleted": False}


def test_a_clean_current_table_passes() -> None:
    report = validate(current_model(LOANS), LazySource(current_loans(*(loan(i) for i in range(50))).lazy()),
                      chunk_rows=7)
    assert report.passed and report.rows_checked == 50 and report.samples == []
    assert report.model == "CuratedLoans" and report.severity == Severity.ERROR


@pytest.mark.parametrize(("values", "column", "rule"), [
    ({"interest_rate": Decimal("-0.01000")}, "interest_rate", "in_range(0, 1)"),
    ({"interest_rate": Decimal("1.00000")}, "interest_rate", "in_range(0, 1)"),
    ({"principal": Decimal("0.00")}, "principal", "greater_than(0)"),
    ({"days_past_due": -3}, "days_past_due", "greater_than_or_equal_to(0)"),
    ({"product": "boat"}, "product", "isin(['mortgage', 'consumer', 'auto', 'sme'])"),
    ({"status": None}, "status", "not_nullable"),
    ({"maturity_date": date(2019, 1, 1)}, "maturity_date, origination_date", "origination_date < maturity_date"),
])
def test_each_kind_of_bad_value_is_caught_with_its_column_rule_and_row(values, column, rule) -> None:
    frame = current_loans(*(loan(i, **values) if i == 13 else loan(i) for i in range(30)))
    report = validate(current_model(LOANS), LazySource(frame.lazy()), chunk_rows=8)
    assert not report.passed
    assert (report.failure_cases, report.failing_rows) == (1, 1)
    assert report.by_column == {column: 1} and report.by_rule == {rule: 1}
    [sample] = report.samples
    assert sample["row"] == 13 and sample["loan_id"] == 13 and sample["rule"] == rule


def test_a_key_repeated_in_another_chunk_is_caught() -> None:
    frame = current_loans(*(loan(i) for i in range(20)), loan(3, **{LSN: 999}))
    whole = validate(current_model(LOANS), LazySource(frame.lazy()), chunk_rows=1000)
    chunked = validate(current_model(LOANS), LazySource(frame.lazy()), chunk_rows=4)
    for report in (whole, chunked):
        assert report.by_rule == {"unique (loan_id)": 2}
        assert sorted(s["row"] for s in report.samples) == [3, 20]


def test_at_most_twenty_failing_rows_are_sampled_but_all_are_counted() -> None:
    frame = current_loans(*(loan(i, days_past_due=-1) for i in range(45)))
    report = validate(current_model(LOANS), LazySource(frame.lazy()), chunk_rows=10)
    assert report.failure_cases == report.failing_rows == 45 and len(report.samples) == 20
    table = markdown_table(report.samples)
    assert table.count("\n") == 21 and table.startswith("| row | loan_id | column | rule | value |")


def test_a_missing_column_and_a_wrong_dtype_fail_the_layout() -> None:
    frame = current_loans(loan(1)).drop("status").with_columns(pl.col("term_months").cast(pl.Int64))
    report = validate(current_model(LOANS), LazySource(frame.lazy()))
    assert report.by_rule == {"column present": 1, "dtype('Int32')": 1}
    assert {s["column"] for s in report.samples} == {"status", "term_months"}


def test_history_needs_one_current_row_per_key_and_valid_from_before_valid_to() -> None:
    good = [version(1, 10, 20), version(1, 20, None), version(2, 11, None)]
    assert validate(history_model(LOANS), LazySource(history_loans(*good).lazy()), chunk_rows=2).passed
    bad = [version(1, 10, None), version(1, 20, None), version(2, 30, 30), version(3, 40, 50) | {"is_current": True}]
    report = validate(history_model(LOANS), LazySource(history_loans(*bad).lazy()), chunk_rows=2)
    assert report.by_rule == {"one is_current row per key": 2, "valid_from before valid_to": 1,
                              "is_current exactly when valid_to is open": 1}


def test_history_values_warn_about_a_rule_broken_by_an_old_version() -> None:
    rows = [version(1, 10, 20, interest_rate=Decimal("-0.50000")), version(1, 20, None)]
    model = history_values_model(LOANS)
    report = validate(model, LazySource(history_loans(*rows).lazy()))
    assert severity_of(model) == Severity.WARN
    assert report.by_rule == {"in_range(0, 1)": 1} and report.samples[0]["valid_from_lsn"] == 10
    assert validate(history_model(LOANS), LazySource(history_loans(*rows).lazy())).passed  # well formed


def raw_rows(**after) -> pl.DataFrame:
    from cardo_pipeline.cdc.arrow_types import raw_arrow_schema

    image = {k: v for k, v in loan(7).items() if k in LOANS.column_names} | after
    row = {"op": "u", "key": '{"loan_id":7}', "before": None, "after": image, "unchanged_toast": [],
           "source_lsn": 5, "source_tx_id": 1, "source_ts": T0, "source_table": "loans", "snapshot": "false",
           "topic": "servicing.public.loans", "partition": 0, "offset": 3, "kafka_timestamp": T0, "ingested_at": T0}
    return pl.DataFrame([row], schema=polars_dtypes(raw_arrow_schema(LOANS)))


def test_raw_images_warn_about_out_of_range_values_while_the_log_stays_well_formed() -> None:
    frame = raw_rows(days_past_due=-5, interest_rate=Decimal("1.50000"))
    assert validate(raw_model(LOANS), LazySource(frame.lazy())).passed
    report = validate(raw_images_model(LOANS), LazySource(frame.lazy()))
    assert report.by_rule == {"after.interest_rate in [0, 1)": 1, "after.days_past_due in [0, inf)": 1}
    assert report.samples[0]["offset"] == 3
    assert validate(raw_images_model(LOANS), LazySource(raw_rows().lazy())).passed


def test_raw_log_rules_catch_an_upsert_without_its_image() -> None:
    frame = raw_rows().with_columns(pl.lit(None, raw_rows().schema["after"]).alias("after"))
    report = validate(raw_model(LOANS), LazySource(frame.lazy()))
    assert report.by_rule == {"an upsert carries its after-image": 1}


def test_every_table_of_the_graph_has_a_model_with_its_severity() -> None:
    models = [dead_letter_model()]
    for table in SOURCE_TABLES:
        models += [raw_model(table), raw_images_model(table), current_model(table), history_model(table),
                   history_values_model(table), mirror_model(table)]
    names = [m.name for m in models]
    assert len(set(names)) == len(names) == 1 + 6 * len(SOURCE_TABLES)
    assert {severity_of(m) for m in models} == {Severity.ERROR, Severity.WARN}
    assert all(m.description for m in models)


class RecordingSource(LazySource):
    """A table that records what the validator asks of it."""

    def __init__(self, frame: pl.LazyFrame):
        super().__init__(frame)
        self.chunks: list[tuple[int, tuple[str, ...]]] = []
        self.whole: list[tuple[str, ...]] = []

    def batches(self, columns, chunk_rows):
        for chunk in super().batches(columns, chunk_rows):
            self.chunks.append((chunk.height, tuple(chunk.columns)))
            yield chunk

    def columns(self, columns):
        self.whole.append(tuple(columns))
        return super().columns(columns)


def test_memory_is_bounded_by_the_chunk_and_the_narrow_columns_checked_across_rows() -> None:
    frame = current_loans(*(loan(i, servicer_notes="n" * 3000) for i in range(100)))
    source = RecordingSource(frame.lazy())
    assert validate(current_model(LOANS), source, chunk_rows=16).passed
    assert source.chunks and max(height for height, _ in source.chunks) <= 16
    assert all("servicer_notes" not in columns for _, columns in source.chunks)  # no check reads the notes
    assert source.whole == [("loan_id",)]  # the key, for uniqueness: the only column read whole

    history = RecordingSource(history_loans(*(version(i, 10, None) for i in range(40))).lazy())
    assert validate(history_model(LOANS), history, chunk_rows=16).passed
    assert max(height for height, _ in history.chunks) <= 16
    assert history.whole == [("loan_id", "valid_from_lsn", "valid_from_offset", "is_current")]
