"""The hidden credit-risk model: borrower and loan attributes -> a risk score -> monthly transition
probabilities of a delinquency Markov chain, and the exact 12-month default probability under that chain.

One step of the chain is one instalment due date (or, after maturity, one month of collections).
States: CURRENT, ARREARS_1..3 (instalments unpaid: the oldest is about 0, 30, 60 days past due when the step
is recorded, 5 days after the due date), DEFAULT (a fourth unpaid step, so always 90+ days past due), PREPAID
and MATURED. The simulator draws every step from `step_row`, and `pd_12m` propagates the same rows exactly,
so the truth it writes is the real probability of the simulated book, not a label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cardo_pipeline.simulator.geo import region_risk

CURRENT, ARREARS_1, ARREARS_2, ARREARS_3, DEFAULT, PREPAID, MATURED = range(7)
ACTIVE_STATES = (CURRENT, ARREARS_1, ARREARS_2, ARREARS_3)
PD_HORIZON_STEPS = 12

# Logit intercepts and slopes, calibrated so the book defaults at about 2-6% a year.
MISS_INTERCEPT, MISS_SLOPE = -4.85, 1.15
CURE_INTERCEPTS = (0.9, 0.0, -0.8)  # paying all arrears from ARREARS_1..3
ROLL_INTERCEPTS = (-0.4, 0.3, 1.0)  # paying nothing (one more instalment unpaid) from ARREARS_1..3
ARREARS_SLOPE = 0.6
MONTHLY_PREPAY: dict[str, float] = {"mortgage": 0.005, "consumer": 0.012, "auto": 0.010, "sme": 0.008}
PRODUCT_RISK: dict[str, float] = {"mortgage": -0.45, "consumer": 0.35, "auto": 0.0, "sme": 0.25}
EMPLOYMENT_RISK: dict[str, float] = {
    "employed": 0.0, "self_employed": 0.35, "unemployed": 1.0, "retired": -0.1,  # individuals
    "trading": 0.0, "startup": 0.6,  # SMEs
}  # fmt: skip


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True)
class RiskFactors:
    """What drives a loan's risk. All but `idiosyncratic` can be derived from the source tables."""

    product: str
    employment_status: str
    income_ratio: float  # annual income / the country median for the borrower type
    debt_to_income: float  # all annual debt service, this loan included, / annual income
    loan_to_value: float | None  # None when unsecured
    age: int | None  # None for SMEs
    nuts3: str
    idiosyncratic: float  # hidden: what no feature in the data explains


def risk_score(f: RiskFactors) -> float:
    """Additive risk score in logit units; about N(0, 1) over the book."""
    score = PRODUCT_RISK[f.product] + EMPLOYMENT_RISK[f.employment_status] + region_risk(f.nuts3)
    score += 2.5 * (min(f.debt_to_income, 0.9) - 0.30)
    score -= 0.6 * math.log(max(f.income_ratio, 0.05))
    score += 0.4 if f.loan_to_value is None else 2.0 * (f.loan_to_value - 0.75)
    if f.age is not None and f.age < 26:
        score += 0.3
    return score + f.idiosyncratic


@dataclass(frozen=True)
class LoanRisk:
    """Monthly transition probabilities of one loan (its risk does not change over its life)."""

    score: float
    miss: float  # CURRENT -> ARREARS_1
    prepay: float  # CURRENT -> PREPAID (before the last instalment)
    cure: tuple[float, float, float]  # ARREARS_n -> CURRENT
    roll: tuple[float, float, float]  # ARREARS_n -> ARREARS_n+1 (DEFAULT from ARREARS_3)
    late: float  # CURRENT stays CURRENT but pays 6-20 days late (observable, no effect on the chain)

    @classmethod
    def from_score(cls, score: float, product: str) -> LoanRisk:
        cure = tuple(_sigmoid(a - ARREARS_SLOPE * score) for a in CURE_INTERCEPTS)
        roll = tuple(
            (1 - c) * _sigmoid(b + ARREARS_SLOPE * score) for c, b in zip(cure, ROLL_INTERCEPTS, strict=True)
        )
        return cls(
            score=score,
            miss=_sigmoid(MISS_INTERCEPT + MISS_SLOPE * score),
            prepay=MONTHLY_PREPAY[product]
            * (1.2 - 0.4 * _sigmoid(score)),  # riskier borrowers refinance less
            cure=cure,  # type: ignore[arg-type]
            roll=roll,  # type: ignore[arg-type]
            late=_sigmoid(-2.6 + 0.8 * score),
        )


def step_row(risk: LoanRisk, state: int, step: int, term: int) -> tuple[tuple[int, float], ...]:
    """Next-state probabilities at instalment `step` (1-based) of a `term`-instalment loan, in draw order."""
    if state in (DEFAULT, PREPAID, MATURED):
        return ((state, 1.0),)
    if state == CURRENT:
        if step < term:
            return ((PREPAID, risk.prepay), (ARREARS_1, risk.miss), (CURRENT, 1.0 - risk.prepay - risk.miss))
        if step == term:  # paying the last instalment (early or not) repays the loan
            return ((ARREARS_1, risk.miss), (MATURED, 1.0 - risk.miss))
        raise ValueError("a current loan has no step after maturity")
    n = state - ARREARS_1
    cured = CURRENT if step < term else MATURED
    if step <= term:
        cure, roll = risk.cure[n], risk.roll[n]
        return ((cured, cure), (state + 1, roll), (state, 1.0 - cure - roll))
    # After maturity no instalment falls due: the borrower clears the arrears or they age by a month.
    return ((cured, risk.cure[n]), (state + 1, 1.0 - risk.cure[n]))


def draw_next_state(row: tuple[tuple[int, float], ...], u: float) -> int:
    """The next state for a uniform draw `u` in [0, 1), by walking the row's cumulative probabilities."""
    cumulative = 0.0
    for state, p in row:
        cumulative += p
        if u < cumulative:
            return state
    return row[-1][0]


def pd_12m(risk: LoanRisk, state: int, next_step: int, term: int) -> float:
    """Exact probability of reaching DEFAULT within the next 12 steps (`next_step` .. `next_step` + 11)."""
    dist = {state: 1.0}
    for step in range(next_step, next_step + PD_HORIZON_STEPS):
        new: dict[int, float] = {}
        for s, p in dist.items():
            for t, q in step_row(risk, s, step, term):
                new[t] = new.get(t, 0.0) + p * q
        dist = new
    return dist.get(DEFAULT, 0.0)
