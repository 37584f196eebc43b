"""Point-in-time loan features and default outcomes: the source clock, features that never read past their cutoff,
outcomes that read exactly the 12 months after it, and the tables' Pandera models (fast: simulated histories).
The tests taking `engine` run on the local engine and on Spark (marked `spark`: `-m "not spark"` leaves it out)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest

from cardo_pipeline.features.clock import KNOWN_AT, as_of, cutoff_end, source_clock, with_known_at
from cardo_pipeline.features.loan_features import (
    FEATURE_COLUMNS,
    KnownHistories,
    cutoffs_between,
    cutoffs_known,
    feature_schema,
    features_at,
    month_end,
    months_before,
)
from cardo_pipeline.features.models import loan_default_outcomes_model, loan_features_model
from cardo_pipeline.features.outcomes import OUTCOME_SCHEMA, cutoffs_with_outcome
from cardo_pipeline.quality.validate import LazySource, validate
from cardo_pipeline_tests.conftest import ENGINES
from cardo_pipeline_tests.feature_helpers import book_features, engine_for, postcode_table, simulated_book


def _versions(rows: list[tuple[int, int, str | None, bool]]) -> pl.LazyFrame:
    """(key, lsn, updated_at or None, is_deleted) -> a history frame."""
    return pl.DataFrame(
        [(k, lsn, lsn, None if ts is None else datetime.fromisoformat(ts).replace(tzinfo=UTC), deleted)
         for k, lsn, ts, deleted in rows],
        schema={"id": pl.Int64, "valid_from_lsn": pl.Int64, "valid_from_offset": pl.Int64,
                "updated_at": pl.Datetime("us", "UTC"), "is_deleted": pl.Boolean}, orient="row").lazy()


def test_the_clock_is_the_latest_stamp_so_far_and_a_delete_takes_the_next_one() -> None:
    a = _versions([(1, 10, "2024-01-05", False), (1, 30, "2024-01-02", False),  # a backdated stamp
                   (2, 40, "2024-01-03", True),  # a delete: its image's stamp is the row's old one
                   (3, 50, "2024-02-01", False)])
    b = _versions([(9, 20, "2024-01-10", False)])
    clock = source_clock([a, b])
    known = with_known_at(a, clock).collect()
    assert known[KNOWN_AT].dt.date().to_list() == [date(2024, 1, 5), date(2024, 1, 10), date(2024, 2, 1),
                                                   date(2024, 2, 1)]
    # The backdated version (stamped 2 January) is known only once the clock passed its LSN (10 January).
    assert as_of(with_known_at(a, clock), "id", datetime(2024, 1, 7, tzinfo=UTC)).collect().select(
        "id", "valid_from_lsn").rows() == [(1, 10)]
    assert as_of(with_known_at(a, clock), "id", datetime(2024, 1, 31, tzinfo=UTC)).collect().select(
        "id", "valid_from_lsn").rows() == [(1, 30)]


def test_as_of_keeps_each_keys_last_version_known_and_drops_deleted_rows() -> None:
    a = _versions([(1, 10, "2024-01-05", False), (1, 30, "2024-03-02", False), (2, 40, "2024-01-03", False),
                   (2, 60, None, True), (3, 70, "2024-04-01", False)])
    known = with_known_at(a, source_clock([a]))

    def rows(cutoff: date) -> list[tuple[int, int]]:
        return as_of(known, "id", cutoff_end(cutoff)).collect().select("id", "valid_from_lsn").rows()

    # 2's insert is stamped 3 January but committed after a change stamped 2 March: known from 2 March.
    assert rows(date(2024, 2, 29)) == [(1, 10)]
    # The delete is known from the next stamp on (1 April): in March 2 still stands, in April it is gone.
    assert rows(date(2024, 3, 31)) == [(1, 30), (2, 40)]
    assert rows(date(2024, 4, 30)) == [(1, 30), (3, 70)]


def test_month_arithmetic() -> None:
    assert month_end(2024, 2) == date(2024, 2, 29) and month_end(2024, 12) == date(2024, 12, 31)
    assert months_before(date(2024, 3, 31), 1) == date(2024, 2, 29)
    assert months_before(date(2024, 3, 31), 12) == date(2023, 3, 31)
    assert months_before(date(2024, 1, 31), -12) == date(2025, 1, 31)
    assert cutoffs_between(date(2024, 11, 1), date(2025, 2, 27)) == [date(2024, 11, 30), date(2024, 12, 31),
                                                                      date(2025, 1, 31)]


@pytest.fixture(scope="module")
def book() -> tuple[KnownHistories, pl.DataFrame, dict[str, pl.LazyFrame]]:
    return simulated_book()


@pytest.fixture(scope="module")
def postcodes() -> pl.DataFrame:
    return postcode_table()


@pytest.fixture(scope="module", params=ENGINES)
def engine(request):
    """The local engine, then Spark (marked `spark`)."""
    return engine_for(request)


def _prefix_histories(histories: dict[str, pl.LazyFrame], last_lsn: int) -> dict[str, pl.LazyFrame]:
    return {n: h.filter(pl.col("valid_from_lsn") <= last_lsn) for n, h in histories.items()}


def test_features_as_of_a_cutoff_are_those_the_data_of_that_day_gives(engine, book, postcodes) -> None:
    """The features of a cutoff built from the whole history equal those built from the history as it stood when
    the source clock passed the cutoff: nothing recorded later leaks in."""
    known, _, histories = book
    # Spark: one cutoff (each prefix is a history of its own to run the clock over)
    cutoffs = [date(2024, 4, 30), date(2024, 9, 30), date(2025, 1, 31)] if engine.name == "local" else [
        date(2024, 9, 30)]
    for cutoff in cutoffs:
        end = cutoff_end(cutoff)
        # The first stamped version at or after the cutoff: the data a run at that moment would have read.
        passing = known.loans.filter(pl.col(KNOWN_AT) >= end)["valid_from_lsn"].min()
        full = book_features(engine, [cutoff])
        then = engine.features(engine.known(_prefix_histories(histories, passing)), postcodes, [cutoff])
        assert full.height > 50
        engine.assert_same(full, then)


def test_changes_after_the_cutoff_backdated_or_not_leave_the_features_unchanged(engine, book, postcodes) -> None:
    _, _, histories = book
    cutoff, later_cutoff = date(2024, 9, 30), date(2026, 12, 31)
    before = book_features(engine, [cutoff])
    loans = histories["loans"].collect()
    last_lsn = int(loans["valid_from_lsn"].max())
    victims = before["loan_id"].head(5).to_list()
    later = loans.filter(pl.col("loan_id").is_in(victims)).group_by("loan_id").agg(pl.all().last()).with_columns(
        pl.col("interest_rate") * 3, pl.lit("defaulted").alias("status"), pl.lit(400).alias("days_past_due"),
        pl.lit(0.0).alias("outstanding_principal"),
        # the first two are stamped today, the others backdated into the cutoff's month
        pl.when(pl.col("loan_id").is_in(victims[:2])).then(pl.lit(datetime(2026, 12, 1, tzinfo=UTC)))
        .otherwise(pl.lit(datetime(2024, 9, 15, tzinfo=UTC))).alias("updated_at"),
        (pl.int_range(pl.len()) * 8 + last_lsn + 8).alias("valid_from_lsn"),
    ).with_columns(pl.col("valid_from_lsn").alias("valid_from_offset")).select(loans.columns)
    changed = dict(histories) | {"loans": pl.concat([loans, later]).lazy()}
    after = engine.features(engine.known(changed), postcodes, [cutoff, later_cutoff])
    engine.assert_same(after.filter(pl.col("cutoff_date") == cutoff), before)
    # ...while a cutoff after them sees them: the loans defaulted, so they are no longer in the active book.
    assert set(victims).isdisjoint(after.filter(pl.col("cutoff_date") == later_cutoff)["loan_id"])


def test_features_hold_their_model_and_their_meaning(engine, book) -> None:
    known, _, _ = book
    cutoffs = cutoffs_known(known, date(2024, 1, 1))
    assert cutoffs[0] == date(2024, 1, 31) and cutoffs[-1] == date(2025, 3, 31)
    frame = book_features(engine, cutoffs)
    assert frame.columns == FEATURE_COLUMNS and frame.schema == feature_schema()
    report = validate(loan_features_model(), LazySource(frame.lazy()))
    assert report.passed, report.samples[:3]
    assert {"full_name", "birth_date", "postcode"}.isdisjoint(frame.columns)
    assert frame["nuts2_code"].null_count() == 0  # the simulator's postcodes are TERCET's
    unsecured = frame.filter(pl.col("product") == "consumer")
    assert unsecured["ltv_origination"].null_count() == unsecured.height
    assert set(unsecured["collateral_type"]) == {"none"}
    mortgages = frame.filter(pl.col("product") == "mortgage")
    assert mortgages["ltv_origination"].is_between(0.35, 1.05).all()
    late = frame.filter(pl.col("days_past_due") > 0)
    assert late.height and (late["max_dpd_3m"] >= late["days_past_due"]).all()
    assert (late["missed_payments_3m"] >= 1).mean() > 0.9


def test_outcomes_cover_cutoffs_with_12_months_behind_them(engine, book) -> None:
    known, truth, _ = book
    cutoffs = cutoffs_known(known, date(2024, 1, 1))
    with_outcome = cutoffs_with_outcome(known, cutoffs)
    assert with_outcome == [c for c in cutoffs if c <= date(2024, 3, 31)]
    outcomes = engine.outcomes(engine.book_known(), cutoffs)
    assert outcomes.schema == OUTCOME_SCHEMA
    assert sorted(outcomes["cutoff_date"].unique()) == with_outcome
    assert validate(loan_default_outcomes_model(), LazySource(outcomes.lazy())).passed
    # Outcomes and the simulator's true PDs describe the same loans: the truth predicts them well.
    joined = outcomes.join(truth.rename({"as_of_date": "cutoff_date"}), on=["loan_id", "cutoff_date"])
    assert joined.height == outcomes.height  # every active loan at a month end has its truth
    rate = outcomes["default_12m"].mean()
    assert 0.01 < rate < 0.12 and abs(joined["pd_12m"].mean() - rate) < 0.03


def test_a_broken_feature_row_fails_the_model(book, postcodes) -> None:
    known, _, _ = book
    frame = features_at(known, postcodes, date(2024, 6, 30))
    broken = frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(-1).otherwise(pl.col("max_dpd_12m"))
                                .alias("max_dpd_12m"))
    report = validate(loan_features_model(), LazySource(broken.lazy()))
    assert not report.passed and report.failing_rows == 1


def test_the_monthly_schedule_runs_the_month_just_ended_once_the_data_has_passed_it(book, tmp_path) -> None:
    import dagster as dg

    from cardo_pipeline.definitions import defs
    from cardo_pipeline.defs.features.loans import cutoff_partitions
    from cardo_pipeline.defs.models.pd import MONTHLY_SCHEDULE
    from cardo_pipeline.defs.resources import LakeResource

    _, _, histories = book  # 16 months from January 2024: the source clock ends on 30 April 2025
    location = defs()
    schedule = location.resolve_schedule_def(MONTHLY_SCHEDULE)
    lake = LakeResource(root=str(tmp_path))

    def tick(when: datetime):
        context = dg.build_schedule_context(scheduled_execution_time=when, resources={"lake": lake},
                                            repository_def=location.get_repository_def())
        return schedule.evaluate_tick(context)

    empty = tick(datetime(2024, 6, 2, 4, tzinfo=UTC))
    assert not empty.run_requests and "materialize the curated group first" in empty.skip_message
    for name, frame in histories.items():
        frame.collect().write_delta(str(tmp_path / "curated" / f"{name}_history"))
    june = tick(datetime(2024, 6, 2, 4, tzinfo=UTC))
    assert [(r.partition_key, r.run_key) for r in june.run_requests] == [("2024-05-01", "2024-05-01")]
    late = tick(datetime(2025, 5, 2, 4, tzinfo=UTC))  # April 2025's end is the book's last instant: not passed
    assert not late.run_requests and "has not reached the cutoff 2025-04-30" in late.skip_message
    assert "the last it has passed is 2025-03-31" in late.skip_message
    assert cutoff_partitions().get_first_partition_key() == "2024-01-01"
