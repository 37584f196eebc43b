"""`features/loan_snapshots`, the loan tape's base: each loan's state as known at each monthly cutoff. On the simulated
book it agrees with the loan features and keeps exactly the loans closed in a month beside the active ones; on small
generated books it is what a plain reading of the events gives; its Pandera model catches a repeated key and a bad
status; the Dagster asset writes its cutoffs and fails for one not known yet (fast: no services)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardo_pipeline.features.clock import cutoff_end
from cardo_pipeline.features.loan_features import (
    HISTORY_COLUMNS,
    KnownHistories,
    cutoffs_known,
    loan_features,
    month_end,
    months_before,
)
from cardo_pipeline.features.loan_snapshots import SNAPSHOT_COLUMNS, loan_snapshots, snapshot_schema
from cardo_pipeline.features.models import TAPE_RULE, loan_snapshots_model
from cardo_pipeline.quality.validate import LazySource, validate
from cardo_pipeline_tests.feature_helpers import postcode_table, simulated_book

SOME_CUTOFFS = [date(2024, 4, 30), date(2024, 10, 31), date(2025, 3, 31)]


@pytest.fixture(scope="module")
def cutoffs() -> list[date]:
    return cutoffs_known(simulated_book()[0], date(2024, 1, 1))


@pytest.fixture(scope="module")
def snapshots(cutoffs) -> pl.DataFrame:
    return loan_snapshots(simulated_book()[0], postcode_table(), cutoffs)


def test_the_tape_has_its_schema_sorted_by_cutoff_and_loan(snapshots, cutoffs) -> None:
    assert snapshots.columns == SNAPSHOT_COLUMNS and snapshots.schema == snapshot_schema()
    assert snapshots.equals(snapshots.sort("cutoff_date", "loan_id"))
    assert sorted(snapshots["cutoff_date"].unique()) == cutoffs
    empty = loan_snapshots(simulated_book()[0], postcode_table(), [])
    assert empty.height == 0 and empty.schema == snapshot_schema()


def test_every_active_loan_of_the_features_is_on_the_tape_with_the_same_values(snapshots) -> None:
    features = loan_features(simulated_book()[0], postcode_table(), SOME_CUTOFFS)
    tape = snapshots.filter(pl.col("cutoff_date").is_in(SOME_CUTOFFS))
    active = tape.filter(pl.col("status") == "active")
    assert active.height == features.height > 100
    joined = features.join(tape, on=["loan_id", "cutoff_date"], how="left", suffix="_tape")
    assert joined["status"].to_list() == ["active"] * features.height
    for column in ("borrower_id", "principal", "interest_rate", "days_past_due", "seasoning_months", "product",
                   "term_months", "country_code"):
        assert (joined[column] == joined[f"{column}_tape"]).all(), column
    balance = joined["utilisation"] * joined["principal"]
    assert ((joined["outstanding_principal"] - balance).abs() <= 1e-6 * joined["principal"]).all()
    assert (joined["nuts3_code"].str.slice(0, 4) == joined["nuts2_code"]).all()


def test_the_closed_rows_are_the_loans_active_at_the_previous_cutoff_and_no_longer(snapshots, cutoffs) -> None:
    closed_total = 0
    for previous, cutoff in zip(cutoffs, cutoffs[1:], strict=False):
        before = snapshots.filter(pl.col("cutoff_date") == previous)
        now = snapshots.filter(pl.col("cutoff_date") == cutoff)
        active_before = set(before.filter(pl.col("status") == "active")["loan_id"])
        active_now = set(now.filter(pl.col("status") == "active")["loan_id"])
        originated = now.filter(pl.col("previous_status").is_null())
        # a loan new on the tape is one originated in the month
        assert originated["origination_date"].is_between(previous, cutoff, closed="right").all()
        assert set(originated["loan_id"]).isdisjoint(before["loan_id"])
        leaving = now.filter((pl.col("status") != "active") & (pl.col("previous_status").is_null()
                                                               | (pl.col("previous_status") == "active")))
        closed = set(leaving["loan_id"])
        assert closed == (active_before - active_now) | (closed & set(originated["loan_id"]))
        # the defaulted stay (the non-performing stock) until written off; nothing repaid or written off before the
        # previous cutoff is here, and the previous state is the previous row's
        defaulted_before = set(before.filter(pl.col("status") == "defaulted")["loan_id"])
        stock = now.filter(pl.col("previous_status") == "defaulted")
        assert set(stock["loan_id"]) <= defaulted_before and (stock["status"] == "defaulted").all()
        assert set(now["loan_id"]) <= active_before | defaulted_before | set(originated["loan_id"])
        carried = now.join(before, on="loan_id", suffix="_before")
        assert carried.height == now.height - originated.height
        assert (carried["previous_status"] == carried["status_before"]).all()
        assert (carried["previous_outstanding_principal"] == carried["outstanding_principal_before"]).all()
        closed_total += len(closed)
    # each loan leaves the performing book once; a repaid loan's row is its last
    leaving_rows = snapshots.filter((pl.col("status") != "active") & (pl.col("previous_status").is_null()
                                                                       | (pl.col("previous_status") == "active")))
    assert leaving_rows.height == closed_total > 20 and leaving_rows["loan_id"].n_unique() == leaving_rows.height
    last = snapshots.group_by("loan_id").agg(pl.col("cutoff_date").max().alias("last"))
    repaid = snapshots.filter(pl.col("status") == "repaid").join(last, on="loan_id")
    assert repaid.height and (repaid["cutoff_date"] == repaid["last"]).all()
    assert snapshots["nuts3_code"].null_count() == 0  # the simulator's postcodes are TERCET's


def test_the_model_passes_the_book_and_counts_a_repeated_key_and_a_bad_status(snapshots) -> None:
    model = loan_snapshots_model()
    assert validate(model, LazySource(snapshots.lazy())).passed
    # the simulator's balances amortise: never above the principal, checked by the model
    assert (snapshots["outstanding_principal"] <= snapshots["principal"]).all()

    repeated = pl.concat([snapshots, snapshots.slice(100, 1)])
    report = validate(model, LazySource(repeated.lazy()), chunk_rows=500)
    assert not report.passed and report.failing_rows == 2
    assert list(report.by_rule) == ["unique (loan_id, cutoff_date)"]

    carried = pl.col("previous_status") == "active"  # a row the tape rule holds for whatever its status
    row = snapshots.with_row_index().filter(carried)["index"][0]
    bad = snapshots.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit("frozen"))
                                 .otherwise(pl.col("status")).alias("status"))
    report = validate(model, LazySource(bad.lazy()))
    assert not report.passed and report.failing_rows == 1 and report.by_column == {"status": 1}

    off_tape = snapshots.with_columns(pl.lit("repaid").alias("status"), pl.lit("defaulted").alias("previous_status"))
    report = validate(model, LazySource(off_tape.head(10).lazy()))
    assert report.by_rule == {TAPE_RULE: 10}


# --- small generated books: the tape against a plain reading of their events ---------------------------------------

MONTHS = 6  # January to June 2024
POSTCODE = ("DE", "01067", "DED21")  # TERCET's
UNMATCHED = ("DE", "00000", None)


@dataclass(frozen=True)
class LoanPath:
    created: int  # the month (0 = January 2024) it is originated, on the 10th
    closed_after: int | None  # months after creation it closes, on the 20th (0: the month it is originated)
    closed_as: str  # repaid or defaulted
    written_off_after: int | None  # months after a default it is written off, on the 20th
    matched: bool  # its borrower's postcode is TERCET's


def _day(month: int, day: int) -> datetime:
    return datetime.combine(date(2024 + month // 12, month % 12 + 1, day), time(12), tzinfo=UTC)


def _loan_events(loan_id: int, path: LoanPath) -> list[tuple[datetime, dict]]:
    """(when, the loan's row from then): origination, a balance update each month it stays active, its close."""
    principal = 1000.0 * loan_id
    row = {"loan_id": loan_id, "borrower_id": loan_id, "product": "consumer", "principal": principal,
           "interest_rate": 0.05, "term_months": 24, "origination_date": _day(path.created, 10).date(),
           "outstanding_principal": principal, "status": "active", "days_past_due": 0}
    events = [(_day(path.created, 10), row)]
    close = None if path.closed_after is None else path.created + path.closed_after
    for month in range(path.created + 1, MONTHS + 2):
        if close is not None and month >= close:
            break
        row = row | {"outstanding_principal": principal * (1 - 0.04 * (month - path.created))}
        events.append((_day(month, 20), row))
    if close is not None:
        done = {"status": path.closed_as, "days_past_due": 0 if path.closed_as == "repaid" else 95}
        if path.closed_as == "repaid":
            done["outstanding_principal"] = 0.0
        row = row | done
        events.append((_day(close, 20), row))
        if path.closed_as == "defaulted" and path.written_off_after is not None:
            row = row | {"status": "written_off", "outstanding_principal": 0.0}
            events.append((_day(close + path.written_off_after, 20), row))
    return events


def _known(paths: list[LoanPath]) -> tuple[KnownHistories, dict[int, list[tuple[datetime, dict]]]]:
    events = {i + 1: _loan_events(i + 1, path) for i, path in enumerate(paths)}
    changes = sorted([(when, 1, loan_id, row) for loan_id, loan in events.items() for when, row in loan]
                     + [(loan[0][0], 0, loan_id, None) for loan_id, loan in events.items()],  # borrowers first
                     key=lambda change: change[:3])
    loans, borrowers = [], []
    for lsn, (when, kind, loan_id, row) in enumerate(changes, start=1):
        version = {"valid_from_lsn": lsn, "valid_from_offset": 0, "is_deleted": False, "updated_at": when}
        if kind:
            loans.append(row | version)
        else:
            country, postcode, _ = POSTCODE if paths[loan_id - 1].matched else UNMATCHED
            borrowers.append({"borrower_id": loan_id, "borrower_type": "individual", "birth_date": date(1980, 1, 1),
                              "annual_income": 50000.0, "employment_status": "employed", "postcode": postcode,
                              "country_code": country} | version)
    version_types = {"valid_from_lsn": pl.Int64, "valid_from_offset": pl.Int64, "is_deleted": pl.Boolean,
                     "updated_at": pl.Datetime("us", "UTC")}
    types = {
        "loans": {"loan_id": pl.Int64, "borrower_id": pl.Int64, "product": pl.String, "principal": pl.Float64,
                  "interest_rate": pl.Float64, "term_months": pl.Int32, "origination_date": pl.Date,
                  "outstanding_principal": pl.Float64, "status": pl.String, "days_past_due": pl.Int32},
        "borrowers": {"borrower_id": pl.Int64, "borrower_type": pl.String, "birth_date": pl.Date,
                      "annual_income": pl.Float64, "employment_status": pl.String, "postcode": pl.String,
                      "country_code": pl.String},
        "collaterals": {"collateral_id": pl.Int64, "loan_id": pl.Int64, "collateral_type": pl.String,
                        "appraised_value": pl.Float64, "appraisal_date": pl.Date},
        "payments": {"payment_id": pl.Int64, "loan_id": pl.Int64, "due_date": pl.Date, "amount_due": pl.Float64,
                     "amount_paid": pl.Float64, "status": pl.String},
    }
    assert types.keys() == HISTORY_COLUMNS.keys()
    rows = {"loans": loans, "borrowers": borrowers, "collaterals": [], "payments": []}
    histories = {name: pl.DataFrame(rows[name], schema=types[name] | version_types, orient="row").lazy()
                 for name in types}
    return KnownHistories.from_histories(histories), events


def _state(loan: list[tuple[datetime, dict]], end: datetime) -> dict | None:
    known = [row for when, row in loan if when < end]
    return known[-1] if known else None


def _expected(events: dict[int, list[tuple[datetime, dict]]], paths: list[LoanPath], cutoff: date) -> list[tuple]:
    rows = []
    for loan_id, loan in sorted(events.items()):
        now = _state(loan, cutoff_end(cutoff))
        before = _state(loan, cutoff_end(months_before(cutoff, 1)))
        if now is None or not (now["status"] in ("active", "defaulted") or before is None
                               or before["status"] == "active"):
            continue
        created = paths[loan_id - 1].created
        rows.append((loan_id, now["status"], now["outstanding_principal"], before and before["status"],
                     before and before["outstanding_principal"], cutoff.month - 1 - created,
                     POSTCODE[2] if paths[loan_id - 1].matched else None))
    return rows


loan_paths = st.builds(
    LoanPath, created=st.integers(0, MONTHS - 1), closed_after=st.none() | st.integers(0, MONTHS),
    closed_as=st.sampled_from(["repaid", "defaulted"]), written_off_after=st.none() | st.integers(1, 3),
    matched=st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths=st.lists(loan_paths, min_size=1, max_size=12))
def test_the_tape_is_what_the_events_give(paths: list[LoanPath]) -> None:
    known, events = _known(paths)
    cutoffs = [month_end(2024, m + 1) for m in range(MONTHS)]
    tape = loan_snapshots(known, pl.DataFrame([POSTCODE], schema=["country_code", "postcode", "nuts3_code"],
                                              orient="row"), cutoffs)
    assert tape.schema == snapshot_schema()
    for cutoff in cutoffs:
        got = tape.filter(pl.col("cutoff_date") == cutoff).select(
            "loan_id", "status", "outstanding_principal", "previous_status", "previous_outstanding_principal",
            "seasoning_months", "nuts3_code").rows()
        assert got == _expected(events, paths, cutoff), cutoff
    assert validate(loan_snapshots_model(), LazySource(tape.lazy())).passed


def test_changes_after_the_cutoff_backdated_or_not_leave_the_tape_unchanged() -> None:
    paths = [LoanPath(0, None, "repaid", None, True), LoanPath(1, 2, "defaulted", 1, False),
             LoanPath(2, 0, "repaid", None, True)]
    known, _ = _known(paths)
    cutoff, postcodes = date(2024, 4, 30), postcode_table()
    before = loan_snapshots(known, postcodes, [cutoff])
    last = known.loans.filter(pl.col("loan_id") == 1).sort("valid_from_lsn").tail(1)
    # after every change so far, the always active loan 1 written off: stamped in the cutoff's month (backdated),
    # then after it
    later = pl.concat([last.with_columns(pl.lit("written_off").alias("status"), pl.lit(lsn, pl.Int64)
                                         .alias("valid_from_lsn"), pl.lit(stamp).alias("updated_at"))
                       for lsn, stamp in ((1000, _day(3, 15)), (1001, _day(8, 1)))])
    loans = pl.concat([known.loans, later]).select(*HISTORY_COLUMNS["loans"], "valid_from_lsn", "valid_from_offset",
                                                   "is_deleted", "updated_at")
    histories = {name: getattr(known, name).select(*HISTORY_COLUMNS[name], "valid_from_lsn", "valid_from_offset",
                                                   "is_deleted", "updated_at").lazy() for name in HISTORY_COLUMNS}
    changed = KnownHistories.from_histories(histories | {"loans": loans.lazy()})
    assert loan_snapshots(changed, postcodes, [cutoff]).equals(before)
    after = loan_snapshots(changed, postcodes, [date(2024, 8, 31)])
    assert 1 in after.filter(pl.col("status") == "written_off")["loan_id"].to_list()


# --- the Dagster asset ------------------------------------------------------------------------------------------------

def test_the_asset_writes_its_cutoffs_with_their_counts_and_fails_for_one_not_known_yet(tmp_path) -> None:
    import dagster as dg

    from cardo_pipeline.defs.features.loans import LOAN_SNAPSHOTS, build_loan_feature_defs
    from cardo_pipeline.defs.keys import reference_key
    from cardo_pipeline.defs.reference.assets import POSTCODES
    from cardo_pipeline.defs.resources import LakeResource
    from cardo_pipeline.tables import TABLES_BY_NAME, lake_uri

    _, _, histories = simulated_book()
    for name, frame in histories.items():
        frame.collect().write_delta(lake_uri(str(tmp_path), TABLES_BY_NAME[name].layout.history))
    postcode_table().write_delta(lake_uri(str(tmp_path), reference_key(POSTCODES).path))
    defs = build_loan_feature_defs(dg.MonthlyPartitionsDefinition(start_date="2024-01-01", end_offset=0))
    assets = [a for a in [*defs.assets, *defs.asset_checks] if LOAN_SNAPSHOTS in a.keys
              or any(check.asset_key == LOAN_SNAPSHOTS for check in a.check_keys)]
    resources = {"lake": LakeResource(root=str(tmp_path))}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(assets, selection=[LOAN_SNAPSHOTS], partition_key="2024-12-01",
                                resources=resources, instance=instance)
        assert result.success
        [event] = result.get_asset_materialization_events()
        metadata = {k: v.value for k, v in event.materialization.metadata.items()}
        [check] = result.get_asset_check_evaluations()
        assert check.passed and check.asset_key == LOAN_SNAPSHOTS
        late = dg.materialize(assets, selection=[LOAN_SNAPSHOTS], partition_key="2025-04-01", resources=resources,
                              instance=instance, raise_on_error=False)
        assert not late.success
    written = pl.read_delta(lake_uri(str(tmp_path), LOAN_SNAPSHOTS.path))
    expected = loan_snapshots(simulated_book()[0], postcode_table(), [date(2024, 12, 31)])
    assert written.select(SNAPSHOT_COLUMNS).sort("loan_id").equals(expected)
    assert metadata["engine"] == "local" and metadata["dagster/row_count"] == expected.height
    assert metadata["rows_per_cutoff"] == {"2024-12-31": expected.height}
    assert metadata["unmatched_region_share"] == 0.0
    counts = expected["status"].value_counts()
    assert metadata["status_per_cutoff"].splitlines()[0] == "| cutoff | " + " | ".join(sorted(counts["status"])) + " |"
