"""Pandera models of `features/loan_features` and `features/loan_default_outcomes` (ERROR: the PD model trains and
scores on them, so what breaks them stops it)."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from cardo_pipeline.features.loan_features import AGE_BANDS, WINDOWS_MONTHS, feature_schema
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
