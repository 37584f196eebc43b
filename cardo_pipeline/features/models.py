"""Pandera models of `features/loan_features`, `features/loan_default_outcomes` (ERROR: the PD model trains and
scores on them, so what breaks them stops it) and `features/loan_snapshots` (ERROR: the loan tape is built on it)."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from cardo_pipeline.features.loan_features import AGE_BANDS, WINDOWS_MONTHS, feature_schema
from cardo_pipeline.features.loan_snapshots import ACTIVE, DEFAULTED, snapshot_schema
from cardo_pipeline.quality.models import Severity, model, row_check
from cardo_pipeline.tables import TABLES_BY_NAME

NON_NEGATIVE = {"annual_income", "interest_rate", "principal", "instalment", "debt_to_income", "utilisation",
                "seasoning_months", "remaining_term_months", "days_past_due", "paid_over_due_12m",
                *(f"max_dpd_{m}m" for m in WINDOWS_MONTHS), *(f"missed_payments_{m}m" for m in WINDOWS_MONTHS)}
NULLABLE = {"nuts2_code", "ltv_origination", "ltv_current", "paid_over_due_12m", "nuts2_default_rate_12m",
            "nuts2_loans_12m"}


def _enum(table: str, column: str) -> list[str]:
    (rule,) = TABLES_BY_NAME[table].column(column).rules
    return list(rule.values)


def loan_features_model() -> pa.DataFrameSchema:
    checks = {
        "product": [pa.Check.isin(_enum("loans", "product"))],
        "borrower_type": [pa.Check.isin(_enum("borrowers", "borrower_type"))],
        "employment_status": [pa.Check.isin(_enum("borrowers", "employment_status"))],
        "collateral_type": [pa.Check.isin([*_enum("collaterals", "collateral_type"), "none"])],
        "country_code": [pa.Check.str_matches(r"^[A-Z]{2}$")],
        "nuts2_code": [pa.Check.str_matches(r"^[A-Z]{2}[0-9A-Z]{2}$")],
        "age_band": [pa.Check.isin([label for _, label in AGE_BANDS] + ["66+", "n/a"])],
        "ltv_origination": [pa.Check.gt(0)],
        "ltv_current": [pa.Check.ge(0)],
        "nuts2_default_rate_12m": [pa.Check.in_range(0, 1)],
        "nuts2_loans_12m": [pa.Check.ge(1)],
    }
    for name in NON_NEGATIVE:
        checks.setdefault(name, []).append(pa.Check.ge(0))
    columns = {name: pa.Column(dtype, nullable=name in NULLABLE, checks=checks.get(name, []))
               for name, dtype in feature_schema().items()}
    return model(
        "LoanFeatures", columns,
        checks=[
            row_check("missed payments grow with the window", (pl.col("missed_payments_3m")
                      <= pl.col("missed_payments_6m")) & (pl.col("missed_payments_6m")
                                                          <= pl.col("missed_payments_12m"))),
            row_check("max days past due grows with the window and covers today's",
                      (pl.col("days_past_due") <= pl.col("max_dpd_3m")) & (pl.col("max_dpd_3m")
                      <= pl.col("max_dpd_6m")) & (pl.col("max_dpd_6m") <= pl.col("max_dpd_12m"))),
            row_check("seasoning plus remaining term is the term while the loan is in its term",
                      (pl.col("seasoning_months") >= pl.col("term_months"))
                      | (pl.col("seasoning_months") + pl.col("remaining_term_months") == pl.col("term_months"))),
            row_check("a region's default rate comes with its loan count",
                      pl.col("nuts2_default_rate_12m").is_null() == pl.col("nuts2_loans_12m").is_null()),
        ],
        unique=["loan_id", "cutoff_date"], severity=Severity.ERROR, key=["loan_id", "cutoff_date"],
        description="One row per loan active at a month-end cutoff; every value as known at the cutoff, no "
                    "personal data.",
    )


def loan_default_outcomes_model() -> pa.DataFrameSchema:
    return model(
        "LoanDefaultOutcomes",
        {
            "loan_id": pa.Column(pl.Int64),
            "cutoff_date": pa.Column(pl.Date),
            "default_12m": pa.Column(pl.Int8, checks=pa.Check.isin([0, 1])),
            "defaulted_on": pa.Column(pl.Date, nullable=True),
        },
        checks=[
            row_check("a default has its date, and only a default", (pl.col("default_12m") == 1)
                      == pl.col("defaulted_on").is_not_null()),
            row_check("the default falls in the 12 months after the cutoff", pl.col("defaulted_on").is_null()
                      | ((pl.col("defaulted_on") >= pl.col("cutoff_date"))
                         & (pl.col("defaulted_on") <= pl.col("cutoff_date").dt.offset_by("12mo").dt.month_end()))),
        ],
        unique=["loan_id", "cutoff_date"], severity=Severity.ERROR, key=["loan_id", "cutoff_date"],
        description="Whether each loan active at a cutoff defaulted in the 12 months after it; only cutoffs whose "
                    "12 months have passed.",
    )


SNAPSHOT_NULLABLE = {"previous_status", "previous_outstanding_principal", "nuts3_code"}


TAPE_RULE = ("a loan on the tape is active or defaulted at the cutoff, or was active (or unknown) at the "
             "previous one")


def loan_snapshots_model() -> pa.DataFrameSchema:
    statuses = _enum("loans", "status")
    checks = {
        "product": [pa.Check.isin(_enum("loans", "product"))],
        "status": [pa.Check.isin(statuses)],
        "previous_status": [pa.Check.isin(statuses)],
        "country_code": [pa.Check.str_matches(r"^[A-Z]{2}$")],
        "nuts3_code": [pa.Check.str_matches(r"^[A-Z]{2}[0-9A-Z]{3}$")],
        "principal": [pa.Check.gt(0)],
        "term_months": [pa.Check.gt(0)],
    }
    for name in ("interest_rate", "seasoning_months", "outstanding_principal", "days_past_due",
                 "previous_outstanding_principal"):
        checks.setdefault(name, []).append(pa.Check.ge(0))
    columns = {name: pa.Column(dtype, nullable=name in SNAPSHOT_NULLABLE, checks=checks.get(name, []))
               for name, dtype in snapshot_schema().items()}
    return model(
        "LoanSnapshots", columns,
        checks=[
            row_check(TAPE_RULE, pl.col("status").is_in([ACTIVE, DEFAULTED]) | (pl.col("previous_status") == ACTIVE)
                      | pl.col("previous_status").is_null()),
            row_check("outstanding principal never exceeds the principal",
                      pl.col("outstanding_principal") <= pl.col("principal")),
        ],
        unique=["loan_id", "cutoff_date"], severity=Severity.ERROR, key=["loan_id", "cutoff_date"],
        description="One row per loan and month-end cutoff: the loans active at the cutoff, closed in its month or "
                    "originated in it, each as known at the cutoff, with its status and balance at the previous "
                    "cutoff and its borrower's region.",
    )
