"""The servicing simulator, with no services: determinism, a replay that checks every row change against the
state it applies to, book invariants, the exactness of the true PD (the realised default rate must match it)
and the Postgres sink's statements."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from cardo_pipeline.geo.postcodes import tercet_rows
from cardo_pipeline.simulator import SimulationSummary, geo, simulate
from cardo_pipeline.simulator.book import add_months
from cardo_pipeline.simulator.changes import (
    LONG_NOTE_MIN_BYTES,
    SHORT_NOTE_MAX_BYTES,
    RowChange,
    Transaction,
    is_toasted_note,
)
from cardo_pipeline.simulator.model import (
    ARREARS_1,
    ARREARS_3,
    CURRENT,
    DEFAULT,
    LoanRisk,
    draw_next_state,
    pd_12m,
    step_row,
)
from cardo_pipeline.simulator.notes import NoteWriter
from cardo_pipeline.simulator.postgres_sink import PostgresSink, SimulatorSinkError, _batches
from cardo_pipeline.tables import TABLES_BY_NAME

START = date(2024, 1, 1)
SCALES = {"numeric(14,2)": -2, "numeric(7,5)": -5}  # Decimal exponents
# Per table: (column, nullable, decimal exponent or None, is timestamptz), checked on every row image.
COLUMN_CHECKS = {
    t.name: [(c.name, c.nullable, SCALES.get(c.pg_type), c.pg_type == "timestamptz") for c in t.columns]
    for t in TABLES_BY_NAME.values()
}


class ReplaySink:
    """Applies changes to in-memory tables and fails on anything a database (or a CDC consumer) would reject
    or silently get wrong: a missing or duplicate key, an image that disagrees with the stored row outside the
    columns an update says it sets, time going backwards."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in TABLES_BY_NAME}
        self.truth: dict[tuple[int, date], float] = {}
        self.transactions: list[Transaction] = []
        self.last_commit: datetime | None = None
        self.default_dates: dict[int, date] = {}  # loan_id -> date its status became defaulted
        self.ops: Counter[tuple[str, str]] = Counter()
        self.toast_unchanged = 0
        self.max_id: dict[str, int] = Counter()

    def write(self, transactions: Iterable[Transaction]) -> int:
        written = 0
        for txn in transactions:
            self.apply(txn)
            written += len(txn.changes)
        return written

    def write_truth(self, rows: Iterable[tuple[int, date, float]]) -> None:
        for loan_id, as_of, pd in rows:
            assert (loan_id, as_of) not in self.truth, "truth row written twice"
            assert 0.0 <= pd <= 1.0
            self.truth[loan_id, as_of] = pd

    def apply(self, txn: Transaction) -> None:
        assert txn.committed_at.tzinfo is UTC
        assert self.last_commit is None or txn.committed_at >= self.last_commit, "commit time went backwards"
        self.last_commit = txn.committed_at
        self.transactions.append(txn)
        touched = [(c.table, self.key(c)) for c in txn.changes]
        assert len(touched) == len(set(touched)), "a transaction changes one row twice"
        for change in txn.changes:
            self.apply_change(change, txn.committed_at)

    @staticmethod
    def key(change: RowChange) -> int:
        (pk,) = TABLES_BY_NAME[change.table].primary_key
        return change.row[pk]

    def apply_change(self, change: RowChange, committed_at: datetime) -> None:
        table, key, row = self.tables[change.table], self.key(change), change.row
        checks = COLUMN_CHECKS[change.table]
        assert len(row) == len(checks), f"{change.table} row has other columns than the table"
        for (name, nullable, exponent, is_timestamp), column in zip(checks, row, strict=True):
            value = row[name]
            assert name == column, f"{change.table} row keys are not in the table's column order"
            if value is None:
                assert nullable, f"{change.table}.{name} is NULL"
            elif exponent is not None:
                assert value.as_tuple().exponent == exponent, f"{change.table}.{name}={value!r} off scale"
            elif is_timestamp:
                assert value.tzinfo is UTC
        self.ops[change.table, change.op] += 1
        if change.op == "c":
            assert key not in table, f"duplicate insert of {change.table} {key}"
            assert key > self.max_id[change.table], f"{change.table} ids are not increasing"
            self.max_id[change.table] = key
            assert row["updated_at"] == committed_at
            table[key] = dict(row)
        elif change.op == "u":
            assert key in table, f"update of missing {change.table} {key}"
            assert change.changed and "updated_at" in change.changed
            old = table[key]
            unchanged = {c: v for c, v in row.items() if c not in change.changed}
            assert unchanged == {c: old[c] for c in unchanged}, f"{change.table} {key}: image disagrees"
            assert row["updated_at"] == committed_at
            if change.is_toast_unchanged_update():
                self.toast_unchanged += 1
            if change.table == "loans" and "status" in change.changed and row["status"] == "defaulted":
                assert row["days_past_due"] >= 90, "defaulted before 90 days past due"
                self.default_dates[key] = committed_at.date()
            table[key] = dict(row)
        else:
            assert key in table, f"delete of missing {change.table} {key}"
            assert table[key] == row, f"{change.table} {key}: delete image is not the stored row"
            del table[key]


def _run(loans: int, months: int, seed: int) -> tuple[ReplaySink, SimulationSummary]:
    sink = ReplaySink()
    summary = simulate(sink, loans=loans, months=months, seed=seed, start=START)
    return sink, summary


@pytest.fixture(scope="module")
def book() -> tuple[ReplaySink, SimulationSummary]:
    # 25 months: the first year's origination and month-end cohorts see 12 months of outcome.
    return _run(2_000, 25, seed=20240101)


def _fingerprint(transactions: list[Transaction]) -> list[str]:
    return [repr((t.committed_at, t.changes)) for t in transactions]


def test_same_seed_same_changes_different_seed_different() -> None:
    class Collect:
        def __init__(self) -> None:
            self.transactions: list[Transaction] = []
            self.truth: list[tuple[int, date, float]] = []

        def write(self, transactions: Iterable[Transaction]) -> int:
            chunk = list(transactions)
            self.transactions += chunk
            return sum(len(t.changes) for t in chunk)

        def write_truth(self, rows: Iterable[tuple[int, date, float]]) -> None:
            self.truth += rows

    first, collected = _run(200, 12, seed=7)[0], Collect()
    simulate(collected, loans=200, months=12, seed=7, start=START)
    assert _fingerprint(first.transactions) == _fingerprint(collected.transactions)  # whatever the sink
    assert sorted(first.truth.items()) == sorted(((i, d), p) for i, d, p in collected.truth)
    other = _run(200, 12, seed=8)[0]
    assert _fingerprint(other.transactions) != _fingerprint(first.transactions)


def test_summary_counts_what_the_sink_received(book: tuple[ReplaySink, SimulationSummary]) -> None:
    sink, summary = book
    assert summary.transactions == len(sink.transactions)
    assert {(t, op): n for t, ops in summary.changes.items() for op, n in ops.items()} == dict(sink.ops)
    assert summary.written == summary.total_changes == sum(sink.ops.values())
    assert summary.toast_unchanged_updates == sink.toast_unchanged
    assert summary.truth_rows == len(sink.truth)
    assert summary.deletes == sum(n for (_, op), n in sink.ops.items() if op == "d")
    assert set(summary.as_dict()) >= {"transactions", "changes", "defaults", "prepayments", "corrections"}


def test_ops_mix_covers_cdc_cases(book: tuple[ReplaySink, SimulationSummary]) -> None:
    sink, summary = book
    assert {op for (table, op) in sink.ops if table == "payments"} == {"c", "u", "d"}
    for table in ("borrowers", "loans", "collaterals"):
        assert sink.ops[table, "u"] > 0
    assert summary.toast_unchanged_updates > 100  # loan updates that leave a long note alone
    long_note_edits = [
        c
        for t in sink.transactions
        for c in t.changes
        if c.table == "loans" and "servicer_notes" in c.changed and is_toasted_note(c.row["servicer_notes"])
    ]
    assert long_note_edits, "no update ever sets a long note"
    assert summary.defaults > 0 and summary.prepayments > 0 and summary.maturities > 0
    assert summary.write_offs > 0 and summary.cures > 0 and summary.corrections > 0 and summary.duplicates > 0


def test_loan_states_are_consistent(book: tuple[ReplaySink, SimulationSummary]) -> None:
    sink, _ = book
    payments_by_loan: dict[int, list[dict[str, Any]]] = {}
    for p in sink.tables["payments"].values():
        payments_by_loan.setdefault(p["loan_id"], []).append(p)
    for loan in sink.tables["loans"].values():
        status, dpd, rows = loan["status"], loan["days_past_due"], payments_by_loan.get(loan["loan_id"], [])
        statuses = Counter(p["status"] for p in rows)
        if status == "repaid":
            assert dpd == 0 and loan["outstanding_principal"] == 0
            assert set(statuses) <= {"paid", "late"}, f"repaid loan {loan['loan_id']} has {statuses}"
        elif status == "active":
            assert 0 <= dpd < 90
            assert loan["outstanding_principal"] > 0
            if dpd > 0:
                assert statuses["missed"] > 0
        else:
            assert status in ("defaulted", "written_off") and dpd >= 90
            assert statuses["missed"] >= 4 or loan["maturity_date"] < loan["updated_at"].date()
            if status == "written_off":
                assert statuses["scheduled"] == 0  # the rest of the schedule was cancelled
        assert loan["outstanding_principal"] <= loan["principal"]
        assert loan["maturity_date"] == add_months(loan["origination_date"], loan["term_months"])
    for p in sink.tables["payments"].values():
        assert (p["paid_date"] is None) == (p["status"] in ("scheduled", "missed"))
        assert (p["amount_paid"] == 0) == (p["status"] in ("scheduled", "missed"))


def test_duplicates_are_deleted_days_later(book: tuple[ReplaySink, SimulationSummary]) -> None:
    sink, summary = book
    end = datetime.combine(add_months(START, summary.months), datetime.min.time(), tzinfo=UTC)
    inserted: dict[int, datetime] = {}
    deleted: dict[int, datetime] = {}
    for t in sink.transactions:
        if len(t.changes) == 1 and t.changes[0].table == "payments" and t.changes[0].op in "cd":
            (inserted if t.changes[0].op == "c" else deleted)[t.changes[0].row["payment_id"]] = t.committed_at
    assert inserted
    for payment_id, at in inserted.items():
        if at < end - timedelta(days=11):
            assert timedelta(days=1) <= deleted[payment_id] - at <= timedelta(days=11)


def test_borrowers_collaterals_and_notes_are_well_formed(book: tuple[ReplaySink, SimulationSummary]) -> None:
    sink, _ = book
    known = {(c, p) for c, p, _ in tercet_rows(geo.COUNTRIES)}
    images = [c.row for t in sink.transactions for c in t.changes]
    for row in images:
        if "postcode" in row:
            assert (row["country_code"], row["postcode"]) in known
        if "borrower_type" in row:
            assert (row["birth_date"] is None) == (row["borrower_type"] == "sme")
        if "servicer_notes" in row and row["servicer_notes"] is not None:
            size = len(row["servicer_notes"].encode("utf-8"))
            assert size <= SHORT_NOTE_MAX_BYTES or size >= LONG_NOTE_MIN_BYTES, size
    countries = Counter(b["country_code"] for b in sink.tables["borrowers"].values())
    assert set(countries) == {"IT", "ES", "DE", "FR", "NL", "PT"}


def test_the_simulator_draws_real_postcodes_in_their_countrys_form_across_regions(
        book: tuple[ReplaySink, SimulationSummary]) -> None:
    five_digits = r"\d{5}"
    formats = {"IT": five_digits, "ES": five_digits, "DE": five_digits, "FR": five_digits, "NL": r"\d{4} [A-Z]{2}",
               "PT": r"\d{4}-\d{3}"}
    by_country = geo.postcodes_by_country()
    for country, postcodes in by_country.items():
        drawn = [postcodes[i] for i in range(0, len(postcodes), max(1, len(postcodes) // 500))]
        assert all(re.fullmatch(formats[country], p.postcode) for p in drawn), country
        assert all(p.nuts3[:2] == country and re.fullmatch(r"[A-Z]{2}[0-9A-Z]{3}", p.nuts3) for p in drawn)
    sink, _ = book
    regions = Counter((b["country_code"], nuts3_of(b)) for b in sink.tables["borrowers"].values())
    for country in formats:
        assert len({n[:3] for c, n in regions if c == country}) >= 2, f"{country}: borrowers in one NUTS1 only"


def nuts3_of(borrower: dict) -> str:
    found = geo.postcodes_by_country()[borrower["country_code"]].find(borrower["postcode"])
    assert found is not None, borrower
    return found.nuts3


def test_note_bands() -> None:
    writer = NoteWriter(random.Random(3))
    day = date(2024, 5, 17)
    for _ in range(200):
        assert len(writer.short(day).encode("utf-8")) <= SHORT_NOTE_MAX_BYTES
    long_note = writer.long(day)
    assert len(long_note.encode("utf-8")) >= LONG_NOTE_MIN_BYTES
    lines = long_note.splitlines()
    assert len(set(lines)) == len(lines), "long notes should not repeat themselves"
    grown = writer.long(day, previous=long_note)
    assert grown.startswith(long_note) and len(grown) > len(long_note)


def test_transition_rows_are_distributions() -> None:
    for score in (-3.0, -1.0, 0.0, 1.5, 4.0):
        risk = LoanRisk.from_score(score, "consumer")
        for state in range(7):
            for step, term in ((1, 24), (24, 24), (30, 24)):
                if state == CURRENT and step > term:
                    continue
                row = step_row(risk, state, step, term)
                assert all(p >= 0 for _, p in row) and abs(sum(p for _, p in row) - 1) < 1e-12


@pytest.mark.parametrize(
    ("state", "next_step", "term"), [(CURRENT, 1, 60), (ARREARS_1, 5, 60), (CURRENT, 20, 24)]
)
def test_pd_is_exact_under_the_chain(state: int, next_step: int, term: int) -> None:
    """Monte Carlo with the simulator's own draws agrees with the matrix computation, maturity included."""
    risk, rng, paths = LoanRisk.from_score(2.0, "consumer"), random.Random(5), 20_000
    defaults = 0
    for _ in range(paths):
        s = state
        for step in range(next_step, next_step + 12):
            s = draw_next_state(step_row(risk, s, step, term), rng.random())
        defaults += s == DEFAULT
    pd = pd_12m(risk, state, next_step, term)
    assert 0.02 < pd < 0.9
    assert abs(defaults / paths - pd) < 4 * (pd * (1 - pd) / paths) ** 0.5


def test_pd_increases_with_risk_and_arrears() -> None:
    pds = [pd_12m(LoanRisk.from_score(s, "auto"), CURRENT, 1, 48) for s in (-2, -1, 0, 1, 2)]
    assert pds == sorted(pds) and pds[-1] > 20 * pds[0]
    risk = LoanRisk.from_score(0.0, "auto")
    by_state = [pd_12m(risk, s, 10, 48) for s in (CURRENT, ARREARS_1, ARREARS_1 + 1, ARREARS_3)]
    assert by_state == sorted(by_state)


def _auc(scores: list[float], labels: list[int]) -> float:
    ranked = sorted(zip(scores, labels, strict=True))
    positives = sum(labels)
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        rank_sum += (i + j + 1) / 2 * sum(label for _, label in ranked[i:j])
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * (len(labels) - positives))


@pytest.mark.parametrize("cohort", ["origination", "month_end"])
def test_realised_defaults_match_true_pd(book: tuple[ReplaySink, SimulationSummary], cohort: str) -> None:
    """The 12 instalments after as_of are due by as_of + 12 months; a default is recorded 5 days after its due
    date. A loose 4-sigma band: a wrong PD (a label, or a chain the simulation does not follow) fails it."""
    sink, summary = book
    end = add_months(START, summary.months)
    pds, labels = [], []
    for (loan_id, as_of), pd in sink.truth.items():
        month_end = (as_of + timedelta(days=1)).day == 1
        if month_end != (cohort == "month_end"):
            continue
        # a month end is the day before the first of a month: step from that first (the day never needs clamping)
        horizon = add_months(as_of + timedelta(days=1), 12) + timedelta(days=4) if month_end else \
            add_months(as_of, 12) + timedelta(days=5)
        if horizon >= end:
            continue
        defaulted = sink.default_dates.get(loan_id)
        pds.append(pd)
        labels.append(int(defaulted is not None and as_of < defaulted <= horizon))
    assert len(pds) > 600
    expected, variance = sum(pds), sum(p * (1 - p) for p in pds)
    assert abs(sum(labels) - expected) < 4 * variance**0.5, (sum(labels), expected)
    assert 0.02 <= expected / len(pds) <= 0.06  # a realistic annual default rate
    assert _auc(pds, labels) > 0.8


def test_postgres_sink_sets_only_the_changed_columns() -> None:
    row = {c: None for c in TABLES_BY_NAME["loans"].column_names} | {"loan_id": 7, "days_past_due": 35}
    update = RowChange("loans", "u", row, frozenset({"days_past_due", "status", "updated_at"}))
    ((sql, params),) = _batches([update])
    assert sql == (
        "UPDATE public.loans SET status = %s, days_past_due = %s, updated_at = %s WHERE loan_id = %s"
    )
    assert params == [(None, 35, None, 7)]
    deletes = [RowChange("payments", "d", {"payment_id": i}) for i in (1, 2)]
    assert _batches(deletes) == [("DELETE FROM public.payments WHERE payment_id = %s", [(1,), (2,)])]


def test_postgres_sink_explains_an_unreachable_database() -> None:
    with pytest.raises(SimulatorSinkError, match="cardo stack up"):
        PostgresSink("host=127.0.0.1 port=1 dbname=servicing user=cardo connect_timeout=3")
