"""The servicing book: a discrete-event simulation that turns originations and monthly servicing into
`Transaction`s, in commit-time order, with ids allocated in that order like database sequences.

Every job sits in one time-ordered queue and builds its row images when it runs, from the book's state at that
moment, so each row change carries the true full row whatever else happened in between. A loan's instalment
outcome is drawn on its due date (a "step" of the Markov chain in `model.py`) and recorded a few days later (a
"settle" job); extras (servicer notes, corrections, duplicate postings and their deletion, borrower and
collateral updates) are queued by the jobs that cause them.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from cardo_pipeline.simulator import geo
from cardo_pipeline.simulator.changes import RowChange, Transaction, is_toasted_note
from cardo_pipeline.simulator.model import (
    ARREARS_1,
    CURRENT,
    DEFAULT,
    MATURED,
    PREPAID,
    LoanRisk,
    RiskFactors,
    draw_next_state,
    pd_12m,
    risk_score,
    step_row,
)
from cardo_pipeline.simulator.notes import NoteWriter

CENT = Decimal("0.01")
RATE_SCALE = Decimal("0.00001")  # interest_rate is numeric(7,5)
# An unpaid instalment is recorded as missed by the nightly batch 5 days after its due date.
MISSED_GRACE_DAYS = 5

TERMS: dict[str, tuple[int, ...]] = {
    "mortgage": (120, 180, 240), "consumer": (12, 24, 36, 48, 60), "auto": (24, 36, 48, 60, 72),
    "sme": (12, 24, 36, 48, 60, 84),
}  # fmt: skip
BASE_RATE: dict[str, float] = {"mortgage": 0.032, "consumer": 0.074, "auto": 0.054, "sme": 0.061}
SME_INCOME_MULTIPLE = 5.0  # an SME's annual income (profit) relative to an individual's, per country


@lru_cache(
    maxsize=1 << 16
)  # every payment row needs its due date: the same few thousand dates again and again
def add_months(d: date, months: int) -> date:
    """`d` plus whole months; only used with day <= 28, so the day never needs clamping."""
    y, m = divmod(d.month - 1 + months, 12)
    return d.replace(year=d.year + y, month=m + 1)


def _at(day: date, seconds: int) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC) + timedelta(seconds=seconds)


@dataclass
class _Loan:
    """What the book knows about one open loan (dropped once the loan is repaid or written off)."""

    loan: dict[str, Any]  # current row images
    borrower: dict[str, Any]
    collaterals: list[dict[str, Any]]
    risk: LoanRisk
    created_at: datetime
    first_payment_id: int
    installment: Decimal
    last_installment: Decimal
    monthly_rate: Decimal
    state: int = CURRENT  # chain state after the last drawn step
    steps_drawn: int = 0
    paid: int = 0  # instalments fully paid, in order: the outstanding principal is the balance after them
    unpaid: dict[int, dict[str, Any]] = field(default_factory=dict)  # step -> image of a missed payment row
    oldest_unpaid_due: date | None = None  # kept once defaulted, when the missed rows are no longer tracked
    write_off_step: int | None = None

    @property
    def term(self) -> int:
        return self.loan["term_months"]

    def due(self, step: int) -> date:
        return add_months(self.loan["origination_date"], step)

    def amount_due(self, step: int) -> Decimal:
        return self.last_installment if step == self.term else self.installment

    def balance(self, paid: int) -> Decimal:
        """Outstanding principal after `paid` instalments of the annuity schedule."""
        if paid >= self.term:
            return Decimal("0.00")
        principal, r = self.loan["principal"], self.monthly_rate
        growth = (1 + r) ** paid
        return max(Decimal("0.00"), (principal * growth - self.installment * (growth - 1) / r).quantize(CENT))

    def scheduled_row(self, step: int) -> dict[str, Any]:
        return {
            "payment_id": self.first_payment_id + step - 1,
            "loan_id": self.loan["loan_id"],
            "due_date": self.due(step),
            "amount_due": self.amount_due(step),
            "paid_date": None,
            "amount_paid": Decimal("0.00"),
            "status": "scheduled",
            "updated_at": self.created_at,
        }


@dataclass
class BookCounters:
    originations: int = 0
    defaults: int = 0
    prepayments: int = 0
    maturities: int = 0
    write_offs: int = 0
    cures: int = 0
    corrections: int = 0
    duplicates: int = 0
    note_edits: int = 0
    truth_rows: int = 0


class Book:
    """Runs the simulation; iterate `transactions()` once, and drain `truth` as it fills."""

    def __init__(self, *, loans: int, months: int, seed: int, start: date) -> None:
        if loans < 0 or months < 1:
            raise ValueError("loans must be >= 0 and months >= 1")
        if start.day != 1:
            raise ValueError("start must be the first day of a month")
        self.rng = random.Random(seed)
        self.notes = NoteWriter(self.rng)
        self.start, self.months = start, months
        self.end = _at(add_months(start, months), 0)
        self.loans: dict[int, _Loan] = {}
        self.next_id = {"borrowers": 1, "loans": 1, "collaterals": 1, "payments": 1}
        self.truth: list[tuple[int, date, float]] = []
        self.counters = BookCounters()
        self._queue: list[tuple[datetime, int, Callable[..., Transaction | None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._now = _at(start, 0)
        per_month = [0] * months
        for _ in range(loans):
            per_month[self.rng.randrange(months)] += 1
        for m, count in enumerate(per_month):
            self._schedule(_at(add_months(start, m), 0), self._open_month, m, count)

    # -- queue -----------------------------------------------------------------------------------------------

    def _schedule(self, when: datetime, job: Callable[..., Transaction | None], *args: Any) -> None:
        if when < self._now:
            raise AssertionError(f"job {job.__name__} scheduled in the past: {when} < {self._now}")
        heapq.heappush(self._queue, (when, next(self._seq), job, args))

    def transactions(self) -> Iterator[Transaction]:
        while self._queue and self._queue[0][0] < self.end:
            when, _, job, args = heapq.heappop(self._queue)
            self._now = when
            txn = job(when, *args)
            if txn is not None:
                yield txn

    def _business_time(self, day: date) -> datetime:
        return _at(day, self.rng.randint(7 * 3600, 19 * 3600))

    def _batch_time(self, day: date) -> datetime:
        return _at(day, self.rng.randint(1 * 3600, 4 * 3600))

    def _new_id(self, table: str) -> int:
        value = self.next_id[table]
        self.next_id[table] = value + 1
        return value

    # -- calendar --------------------------------------------------------------------------------------------

    def _open_month(self, now: datetime, month: int, originations: int) -> None:
        first = add_months(self.start, month)
        for _ in range(originations):
            self._schedule(self._business_time(first.replace(day=self.rng.randint(1, 28))), self._originate)
        self._schedule(_at(add_months(first, 1) - timedelta(days=1), 86_399), self._month_end)

    def _month_end(self, now: datetime) -> None:
        """The truth at each monthly cutoff, for the loans the servicing data shows as active then (the population
        the PD model scores). The chain may already be further on (a step drawn, not yet recorded): the truth is
        the chain's, so a default drawn before the cutoff and recorded after it has PD 1."""
        as_of = now.date()
        for loan_id, loan in self.loans.items():
            if loan.loan["status"] == "active" and loan.loan["origination_date"] != as_of:
                pd = pd_12m(loan.risk, loan.state, loan.steps_drawn + 1, loan.term)
                self.truth.append((loan_id, as_of, pd))
                self.counters.truth_rows += 1

    # -- origination -----------------------------------------------------------------------------------------

    def _originate(self, now: datetime) -> Transaction:
        r, today = self.rng, now.date()
        country = r.choices(geo.COUNTRIES, weights=[geo.COUNTRY_WEIGHTS[c] for c in geo.COUNTRIES])[0]
        home = r.choice(geo.postcodes_by_country()[country])
        median = geo.MEDIAN_INCOME[country]
        if r.random() < 0.18:
            borrower_type, age, birth_date = "sme", None, None
            product = "sme" if r.random() < 0.75 else "auto"
            employment = "startup" if r.random() < 0.25 else "trading"
            median *= SME_INCOME_MULTIPLE
            income = median * r.lognormvariate(0, 0.6)
            full_name = f"{r.choice(geo.LAST_NAMES[country])} {r.choice(geo.TRADES[country])} "
            full_name += r.choice(geo.LEGAL_FORMS[country])
        else:
            borrower_type = "individual"
            age = min(r.randint(21, 60) + int(abs(r.gauss(0, 8))), 78)
            birth_date = today - timedelta(days=365 * age + r.randint(0, 364))
            if age >= 64:
                employment = "retired" if r.random() < 0.85 else "employed"
            else:
                employment = r.choices(
                    ("employed", "self_employed", "unemployed"), weights=(0.80, 0.16, 0.04)
                )[0]
            income_factor = {"employed": 1.0, "self_employed": 1.1, "unemployed": 0.45, "retired": 0.7}[
                employment
            ]
            income = median * income_factor * r.lognormvariate(0, 0.45)
            product = r.choices(("mortgage", "consumer", "auto"), weights=(0.12, 0.53, 0.35))[0]
            full_name = f"{r.choice(geo.FIRST_NAMES[country])} {r.choice(geo.LAST_NAMES[country])}"
        income = max(6_000.0, income)
        term = r.choice(TERMS[product])

        # Principal and collateral: LTV only matters for secured products.
        collateral_specs: list[tuple[str, float]] = []  # (type, appraised value)
        ltv: float | None = None
        if product == "mortgage":
            principal = round(income * r.uniform(2.0, 5.5), -3)
            ltv = r.triangular(0.4, 1.0, 0.8)
            collateral_specs.append(("residential", principal / ltv))
        elif product == "auto":
            principal = round(income * r.uniform(0.15, 0.8), -2)
            ltv = r.uniform(0.6, 1.1)
            collateral_specs.append(("vehicle", principal / ltv))
        elif product == "sme":
            principal = round(income * r.uniform(0.3, 2.5), -3)
            n_collaterals = r.choices((0, 1, 2), weights=(0.3, 0.5, 0.2))[0]
            if n_collaterals:
                ltv = r.uniform(0.5, 1.2)
                shares = [1.0] if n_collaterals == 1 else [0.6, 0.4]
                for share in shares:
                    kind = r.choice(("commercial", "equipment"))
                    collateral_specs.append((kind, principal / ltv * share))
        else:  # consumer: unsecured
            principal = max(1_500.0, round(income * r.uniform(0.05, 0.5), -2))
        principal_d = Decimal(int(principal)).quantize(CENT)

        # Price on what the lender sees (no idiosyncratic risk), then measure affordability at that price.
        other_debt = r.betavariate(2, 9) * 0.45  # other debt service / income, hidden from the data
        factors = RiskFactors(
            product, employment, income / median, other_debt + 0.1, ltv, age, home.nuts3, 0.0
        )
        rate = BASE_RATE[product] + 0.010 * risk_score(factors) + r.gauss(0, 0.004)
        rate_d = Decimal(str(max(0.009, rate))).quantize(RATE_SCALE)
        monthly_rate = rate_d / 12
        installment = (principal_d * monthly_rate / (1 - (1 + monthly_rate) ** -term)).quantize(CENT)
        dti = other_debt + float(installment) * 12 / income
        factors = RiskFactors(
            product, employment, income / median, dti, ltv, age, home.nuts3, r.gauss(0, 0.6)
        )
        risk = LoanRisk.from_score(risk_score(factors), product)

        borrower_id, loan_id = self._new_id("borrowers"), self._new_id("loans")
        borrower = {
            "borrower_id": borrower_id, "borrower_type": borrower_type, "full_name": full_name,
            "birth_date": birth_date, "annual_income": Decimal(str(round(income, 2))).quantize(CENT),
            "employment_status": employment, "postcode": home.postcode, "country_code": country,
            "created_at": now, "updated_at": now,
        }  # fmt: skip
        notes_p = {"sme": (0.35, 0.30), "mortgage": (0.20, 0.30)}.get(product, (0.05, 0.20))
        u = r.random()
        notes = (
            self.notes.long(today)
            if u < notes_p[0]
            else self.notes.short(today)
            if u < sum(notes_p)
            else None
        )
        loan_row = {
            "loan_id": loan_id, "borrower_id": borrower_id, "product": product, "currency": "EUR",
            "principal": principal_d, "interest_rate": rate_d, "term_months": term,
            "origination_date": today, "maturity_date": add_months(today, term),
            "outstanding_principal": principal_d, "status": "active", "days_past_due": 0,
            "servicer_notes": notes, "updated_at": now,
        }  # fmt: skip
        collaterals = []
        for kind, value in collateral_specs:
            # Homes and vehicles sit at the borrower's address; business premises usually do too.
            same_place = r.random() < (0.85 if kind in ("residential", "vehicle") else 0.7)
            where = home if same_place else r.choice(geo.postcodes_by_country()[country])
            collaterals.append({
                "collateral_id": self._new_id("collaterals"), "loan_id": loan_id, "collateral_type": kind,
                "appraised_value": Decimal(str(round(value, -2))).quantize(CENT),
                "appraisal_date": today - timedelta(days=r.randint(5, 60)), "postcode": where.postcode,
                "country_code": country, "updated_at": now,
            })  # fmt: skip
        first_payment_id = self.next_id["payments"]
        self.next_id["payments"] += term
        growth = (1 + monthly_rate) ** (term - 1)
        balance_before_last = (principal_d * growth - installment * (growth - 1) / monthly_rate).quantize(
            CENT
        )
        loan = _Loan(
            loan=loan_row, borrower=borrower, collaterals=collaterals, risk=risk, created_at=now,
            first_payment_id=first_payment_id, installment=installment, monthly_rate=monthly_rate,
            last_installment=balance_before_last + (balance_before_last * monthly_rate).quantize(CENT),
        )  # fmt: skip
        self.loans[loan_id] = loan
        self.counters.originations += 1
        self.truth.append((loan_id, today, pd_12m(risk, CURRENT, 1, term)))
        self.counters.truth_rows += 1
        self._schedule(_at(loan.due(1), 0), self._step, loan_id, 1)
        changes = [RowChange("borrowers", "c", dict(borrower)), RowChange("loans", "c", dict(loan_row))]
        changes += [RowChange("collaterals", "c", dict(c)) for c in collaterals]
        changes += [RowChange("payments", "c", loan.scheduled_row(k)) for k in range(1, term + 1)]
        return Transaction(tuple(changes), now)

    # -- monthly servicing -----------------------------------------------------------------------------------

    def _step(self, now: datetime, loan_id: int, step: int) -> None:
        """Draw the outcome of instalment `step` on its due date and queue its recording."""
        loan, r = self.loans[loan_id], self.rng
        due = loan.due(step)
        before = loan.state
        after = draw_next_state(step_row(loan.risk, before, step, loan.term), r.random())
        loan.state, loan.steps_drawn = after, step
        write_off = before == DEFAULT and step == loan.write_off_step
        if before == DEFAULT:
            when = self._business_time(due + timedelta(days=r.randint(5, 15))) if write_off else None
        elif after in (CURRENT, MATURED, PREPAID) and before == CURRENT:
            late = r.random() < loan.risk.late
            when = self._business_time(due + timedelta(days=r.randint(6, 20)) if late else due)
        elif after in (CURRENT, MATURED):  # a cure: all arrears paid at once
            when = self._business_time(due + timedelta(days=r.randint(0, 12)))
        else:
            when = None
        if when is None:  # nothing paid (or only the oldest arrear): the nightly batch records it
            when = self._batch_time(due + timedelta(days=MISSED_GRACE_DAYS))
        if after == DEFAULT and before != DEFAULT and r.random() < 0.6:
            loan.write_off_step = step + r.randint(4, 12)
        self._schedule(when, self._settle, loan_id, step, before, after, write_off)
        if after not in (PREPAID, MATURED) and not write_off:
            self._schedule(_at(loan.due(step + 1), 0), self._step, loan_id, step + 1)

    def _pay(self, row: dict[str, Any], paid_date: date, now: datetime, amount: Decimal) -> dict[str, Any]:
        due = row["due_date"]
        status = "paid" if paid_date <= due + timedelta(days=MISSED_GRACE_DAYS) else "late"
        return row | {"paid_date": paid_date, "amount_paid": amount, "status": status, "updated_at": now}

    def _settle(
        self, now: datetime, loan_id: int, step: int, before: int, after: int, write_off: bool
    ) -> Transaction:
        """Record instalment `step`: payment rows first, then the loan row, in one transaction."""
        loan, r, today = self.loans[loan_id], self.rng, now.date()
        in_schedule = step <= loan.term
        payments: list[RowChange] = []
        paid_row: dict[str, Any] | None = None  # this step's instalment, when it is paid now
        pays_now = after in (CURRENT, PREPAID, MATURED)  # a payment with no arrears left
        if before != DEFAULT and pays_now:
            if before != CURRENT:  # a cure: the arrears are paid too
                self.counters.cures += 1
                for old in sorted(loan.unpaid):
                    row = self._pay(loan.unpaid.pop(old), today, now, loan.amount_due(old))
                    payments.append(RowChange("payments", "u", row, _PAID_COLUMNS))
                    loan.paid += 1
            if in_schedule:
                due = loan.due(step)
                paid_date = today if today > due else due - timedelta(days=r.randint(0, 3))
                amount = loan.amount_due(step)
                if after == PREPAID:
                    amount += loan.balance(loan.paid + 1)
                paid_row = self._maybe_misrecord(
                    self._pay(loan.scheduled_row(step), paid_date, now, amount), now
                )
                payments.append(RowChange("payments", "u", paid_row, _PAID_COLUMNS))
                loan.paid += 1
        else:
            if before == after != DEFAULT:  # the borrower paid the oldest arrear only
                oldest = min(loan.unpaid)
                paid_date = today - timedelta(days=r.randint(0, 4))
                row = self._pay(loan.unpaid.pop(oldest), paid_date, now, loan.amount_due(oldest))
                payments.append(RowChange("payments", "u", row, _PAID_COLUMNS))
                loan.paid += 1
            if in_schedule:  # this step's instalment stays unpaid
                row = loan.scheduled_row(step) | {"status": "missed", "updated_at": now}
                payments.append(RowChange("payments", "u", row, _MISSED_COLUMNS))
                if after != DEFAULT:
                    loan.unpaid[step] = row
        note_now = False
        if after == DEFAULT and before != DEFAULT:
            loan.oldest_unpaid_due = loan.due(min(loan.unpaid, default=step))
            loan.unpaid.clear()  # there is no cure from default: the missed rows are never touched again
            self.counters.defaults += 1
            note_now = r.random() < 0.7  # a default usually comes with a note
        if after == PREPAID or write_off:  # the rest of the schedule is cancelled
            payments += [
                RowChange("payments", "d", loan.scheduled_row(k)) for k in range(step + 1, loan.term + 1)
            ]

        if after in (PREPAID, MATURED):
            values: dict[str, Any] = {
                "outstanding_principal": Decimal("0.00"),
                "days_past_due": 0,
                "status": "repaid",
            }
            self.counters.prepayments += after == PREPAID
            self.counters.maturities += after == MATURED
        else:
            oldest_due = loan.oldest_unpaid_due if after == DEFAULT else loan.due(min(loan.unpaid, default=0))
            status = "written_off" if write_off else "defaulted" if after == DEFAULT else "active"
            values = {
                "outstanding_principal": loan.balance(loan.paid),
                "days_past_due": (today - oldest_due).days if loan.unpaid or after == DEFAULT else 0,
                "status": status,
            }
            self.counters.write_offs += write_off
        if note_now:
            values["servicer_notes"] = self._next_note(loan, today)
        loan_change = self._update_loan(loan, now, values)
        changes = (*payments, loan_change) if loan_change else tuple(payments)

        if after in (PREPAID, MATURED) or write_off:
            del self.loans[loan_id]
        else:
            self._queue_extras(loan, now, step, before, after)
        if paid_row is not None:
            self._maybe_duplicate(paid_row, now)
        return Transaction(changes, now)

    def _update_loan(self, loan: _Loan, now: datetime, values: dict[str, Any]) -> RowChange | None:
        changed = {k for k, v in values.items() if loan.loan[k] != v}
        if not changed:
            return None
        loan.loan.update(values, updated_at=now)
        return RowChange("loans", "u", dict(loan.loan), frozenset(changed | {"updated_at"}))

    def _next_note(self, loan: _Loan, today: date) -> str | None:
        current = loan.loan["servicer_notes"]
        self.counters.note_edits += 1
        if is_toasted_note(current):  # a long log only grows (and is rarely archived away)
            return None if self.rng.random() < 0.03 else self.notes.long(today, previous=current)
        return self.notes.long(today) if self.rng.random() < 0.25 else self.notes.short(today)

    # -- extras ----------------------------------------------------------------------------------------------

    def _queue_extras(self, loan: _Loan, now: datetime, step: int, before: int, after: int) -> None:
        r, loan_id = self.rng, loan.loan["loan_id"]
        p_note = 0.35 if (before == CURRENT and after == ARREARS_1) else 0.015
        if r.random() < p_note:
            self._schedule(
                now + timedelta(days=r.randint(1, 6), seconds=r.randint(0, 36_000)), self._edit_note, loan_id
            )
        if r.random() < 0.003:
            self._schedule(now + timedelta(days=r.randint(1, 20)), self._update_borrower, loan_id)
        if loan.collaterals and step % 12 == 0 and r.random() < 0.3:
            self._schedule(now + timedelta(days=r.randint(1, 10)), self._reappraise, loan_id)

    def _maybe_misrecord(self, row: dict[str, Any], now: datetime) -> dict[str, Any]:
        """About 2% of payments are keyed in wrong and corrected months later."""
        r = self.rng
        if r.random() >= 0.02:
            return row
        right = dict(row)
        if r.random() < 0.75:
            wrong = row | {
                "amount_paid": max(
                    CENT, row["amount_paid"] + Decimal(r.choice((-1, 1)) * r.randint(1, 9_999)) / 100
                )
            }
        else:
            wrong = row | {"paid_date": row["paid_date"] + timedelta(days=r.choice((-3, -2, -1, 1, 2, 3)))}
        when = self._business_time(now.date() + timedelta(days=r.randint(20, 150)))
        self._schedule(when, self._correct_payment, wrong, right)
        return wrong

    def _correct_payment(self, now: datetime, wrong: dict[str, Any], right: dict[str, Any]) -> Transaction:
        self.counters.corrections += 1
        changed = frozenset(k for k in right if right[k] != wrong[k]) | {"updated_at"}
        return Transaction((RowChange("payments", "u", right | {"updated_at": now}, changed),), now)

    def _maybe_duplicate(self, row: dict[str, Any], now: datetime) -> None:
        """About 0.6% of postings are inserted twice by mistake; the duplicate is deleted days later."""
        if self.rng.random() < 0.006:
            self._schedule(now + timedelta(minutes=self.rng.randint(1, 240)), self._insert_duplicate, row)

    def _insert_duplicate(self, now: datetime, row: dict[str, Any]) -> Transaction:
        self.counters.duplicates += 1
        duplicate = row | {"payment_id": self._new_id("payments"), "updated_at": now}
        self._schedule(now + timedelta(days=self.rng.randint(1, 10), seconds=self.rng.randint(0, 30_000)),
                       self._delete_duplicate, duplicate)  # fmt: skip
        return Transaction((RowChange("payments", "c", duplicate),), now)

    def _delete_duplicate(self, now: datetime, duplicate: dict[str, Any]) -> Transaction:
        return Transaction((RowChange("payments", "d", duplicate),), now)

    def _edit_note(self, now: datetime, loan_id: int) -> Transaction | None:
        loan = self.loans.get(loan_id)
        if loan is None:  # closed meanwhile
            return None
        change = self._update_loan(loan, now, {"servicer_notes": self._next_note(loan, now.date())})
        return Transaction((change,), now) if change else None

    def _update_borrower(self, now: datetime, loan_id: int) -> Transaction | None:
        loan = self.loans.get(loan_id)
        if loan is None:
            return None
        r, b = self.rng, loan.borrower
        kind = r.choice(("address", "income", "employment"))
        if kind == "address":
            pc = r.choice(geo.postcodes_by_country()[b["country_code"]])
            values: dict[str, Any] = {"postcode": pc.postcode}
        elif kind == "income":
            values = {
                "annual_income": (b["annual_income"] * Decimal(str(round(r.uniform(0.9, 1.15), 3)))).quantize(
                    CENT
                )
            }
        elif b["borrower_type"] == "sme":
            values = {"employment_status": "trading"}
        else:
            values = {"employment_status": r.choice(("employed", "self_employed", "unemployed"))}
        changed = {k for k, v in values.items() if b[k] != v}
        if not changed:
            return None
        b.update(values, updated_at=now)
        return Transaction((RowChange("borrowers", "u", dict(b), frozenset(changed | {"updated_at"})),), now)

    def _reappraise(self, now: datetime, loan_id: int) -> Transaction | None:
        loan = self.loans.get(loan_id)
        if loan is None:
            return None
        changes = []
        for c in loan.collaterals:
            factor = Decimal(str(round(self.rng.gauss(1.02, 0.06), 3)))
            c.update(appraised_value=(c["appraised_value"] * factor).quantize(Decimal(100)).quantize(CENT),
                     appraisal_date=now.date(), updated_at=now)  # fmt: skip
            changes.append(RowChange("collaterals", "u", dict(c), _APPRAISAL_COLUMNS))
        return Transaction(tuple(changes), now)


_PAID_COLUMNS = frozenset({"paid_date", "amount_paid", "status", "updated_at"})
_MISSED_COLUMNS = frozenset({"status", "updated_at"})
_APPRAISAL_COLUMNS = frozenset({"appraised_value", "appraisal_date", "updated_at"})
