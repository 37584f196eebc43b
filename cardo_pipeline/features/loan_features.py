"""`features/loan_features`: one row per loan active at a monthly cutoff, built only from what was known by then.

Every input is a curated SCD2 history read as of the cutoff (`clock.as_of`): the loan, its borrower, its collaterals
and its payments as the servicing data showed them at the end of the cutoff day, by the source's clock. Nothing
after the cutoff is read, so a change made later (a correction, a backdated one too) leaves the features as they
were. Personal data stays behind: an age band instead of the birth date, no names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import polars as pl

from cardo_pipeline.features.clock import (
    DELETED,
    KNOWN_AT,
    LSN,
    OFFSET,
    STAMP,
    as_of,
    cutoff_end,
    source_clock,
    with_known_at,
)
from cardo_pipeline.geo.postcodes import normalise_postcode

WINDOWS_MONTHS = (3, 6, 12)
REGION_WINDOW_MONTHS = 12
# Pseudo-loans of the book's default rate added to each region's count, so a region with few loans gets a rate
# near the book's instead of 0 or 1.
REGION_PRIOR_LOANS = 25.0
DEFAULTED = ("defaulted", "written_off")
NOT_PAID_ON_TIME = ("missed", "late")  # unpaid after the grace period, or paid after it
AGE_BANDS = ((25, "18-25"), (35, "26-35"), (45, "36-45"), (55, "46-55"), (65, "56-65"))

VERSION = [LSN, OFFSET, DELETED, STAMP]
HISTORY_COLUMNS = {
    "loans": ["loan_id", "borrower_id", "product", "principal", "interest_rate", "term_months", "origination_date",
              "outstanding_principal", "status", "days_past_due"],
    "borrowers": ["borrower_id", "borrower_type", "birth_date", "annual_income", "employment_status", "postcode",
                  "country_code"],
    "collaterals": ["collateral_id", "loan_id", "collateral_type", "appraised_value", "appraisal_date"],
    "payments": ["payment_id", "loan_id", "due_date", "amount_due", "amount_paid", "status"],
}
KEYS = {"loans": "loan_id", "borrowers": "borrower_id", "collaterals": "collateral_id", "payments": "payment_id"}

CATEGORICAL = ["product", "borrower_type", "employment_status", "collateral_type", "country_code", "nuts2_code",
               "age_band"]
NUMERIC = [
    "annual_income", "interest_rate", "principal", "term_months", "instalment", "debt_to_income",
    "ltv_origination", "ltv_current", "utilisation", "seasoning_months", "remaining_term_months", "days_past_due",
    *(f"max_dpd_{m}m" for m in WINDOWS_MONTHS), *(f"missed_payments_{m}m" for m in WINDOWS_MONTHS),
    "paid_over_due_12m", "nuts2_default_rate_12m",
]
IDENTIFIERS = ["loan_id", "cutoff_date", "borrower_id"]
FEATURE_COLUMNS = [*IDENTIFIERS, *CATEGORICAL, *NUMERIC, "nuts2_loans_12m"]


def month_end(year: int, month: int) -> date:
    """The last day of a month: the cutoff of the month's partition."""
    y, m = divmod(month, 12)
    return date(year + y, m + 1, 1) - timedelta(days=1)


def months_before(cutoff: date, months: int) -> date:
    """The month end `months` before a month-end cutoff (the start of a trailing window, exclusive)."""
    total = cutoff.year * 12 + cutoff.month - 1 - months
    return month_end(total // 12, total % 12 + 1)


@dataclass(frozen=True)
class KnownHistories:
    """The four histories, each version with `known_at`, narrowed to what the features read; loan versions also
    with `_next_known_at`."""

    loans: pl.DataFrame
    borrowers: pl.DataFrame
    collaterals: pl.DataFrame
    payments: pl.DataFrame

    @property
    def known_through(self) -> datetime | None:
        """The source clock's latest reading: nothing later is known yet."""
        return max((t[KNOWN_AT].max() for t in (self.loans, self.borrowers, self.collaterals, self.payments)
                    if t.height), default=None)

    @classmethod
    def from_histories(cls, histories: dict[str, pl.LazyFrame]) -> KnownHistories:
        narrowed = {name: histories[name].select(*columns, *VERSION).with_columns(
            pl.col(pl.Decimal).cast(pl.Float64)) for name, columns in HISTORY_COLUMNS.items()}
        clock = source_clock(narrowed.values())
        known = {name: with_known_at(frame, clock).collect() for name, frame in narrowed.items()}
        return cls(**known | {"loans": _with_next_known_at(known["loans"])})


def _months_between(start: pl.Expr, end: date) -> pl.Expr:
    whole = (end.year * 12 + end.month) - (start.dt.year().cast(pl.Int32) * 12 + start.dt.month().cast(pl.Int32))
    return whole - (start.dt.day() > end.day).cast(pl.Int32)


def _age_band(birth_date: pl.Expr, cutoff: date) -> pl.Expr:
    age = _months_between(birth_date, cutoff) // 12
    band = pl.when(birth_date.is_null()).then(pl.lit("n/a"))
    for upper, label in AGE_BANDS:
        band = band.when(age <= upper).then(pl.lit(label))
    return band.otherwise(pl.lit("66+"))


def borrower_regions(borrowers: pl.DataFrame, postcodes: pl.DataFrame) -> pl.DataFrame:
    """borrower_id -> nuts3_code from the postcode each borrower had at the cutoff (null where it does not match
    TERCET's postcodes, `postcodes`: country_code, postcode, nuts3_code)."""
    normalised = borrowers.select("borrower_id", "country_code", pl.struct("country_code", "postcode").map_elements(
        lambda r: normalise_postcode(r["country_code"], r["postcode"]), return_dtype=pl.String).alias("postcode"))
    joined = normalised.join(postcodes.select("country_code", "postcode", "nuts3_code"),
                             on=["country_code", "postcode"], how="left")
    return joined.select("borrower_id", "nuts3_code")


def _window_overlap(versions: pl.DataFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """Versions known before `end` that were each key's current version at some time in [start, end)."""
    return versions.filter((pl.col(KNOWN_AT) < end)
                           & (pl.col("_next_known_at").is_null() | (pl.col("_next_known_at") > start)))


def _with_next_known_at(loans: pl.DataFrame) -> pl.DataFrame:
    """Each loan version with the time its successor became known (null for the last): when it stopped being
    current, for the windows of days past due and the regions' defaults, whatever the cutoff."""
    ordered = loans.sort("loan_id", LSN, OFFSET)
    return ordered.with_columns(pl.col(KNOWN_AT).shift(-1).over("loan_id").alias("_next_known_at"))


def _region_default_rates(loans: pl.DataFrame, regions: pl.DataFrame, cutoff: date) -> pl.DataFrame:
    """Per NUTS2 region: loans that defaulted in the 12 months up to the cutoff over the loans active at some time
    in them, shrunk towards the book's rate; only versions known by the cutoff are read."""
    end, start = cutoff_end(cutoff), cutoff_end(months_before(cutoff, REGION_WINDOW_MONTHS))
    seen = _window_overlap(loans, start, end)
    exposed = seen.filter(pl.col("status") == "active").select("loan_id", "borrower_id").unique()
    defaulted = (seen.filter(pl.col("status").is_in(DEFAULTED) & (pl.col(KNOWN_AT) >= start))
                 .select("loan_id").unique().with_columns(pl.lit(1).alias("defaulted")))
    per_loan = exposed.join(defaulted, on="loan_id", how="left").join(regions, on="borrower_id", how="left")
    per_region = per_loan.group_by("nuts2_code").agg(pl.len().alias("nuts2_loans_12m"),
                                                     pl.col("defaulted").sum().alias("_defaults"))
    book_rate = per_loan["defaulted"].sum() / per_loan.height if per_loan.height else 0.0
    return per_region.with_columns(
        ((pl.col("_defaults") + REGION_PRIOR_LOANS * book_rate) / (pl.col("nuts2_loans_12m") + REGION_PRIOR_LOANS))
        .alias("nuts2_default_rate_12m")).drop("_defaults").filter(pl.col("nuts2_code").is_not_null())


def _payment_behaviour(payments: pl.DataFrame, cutoff: date) -> pl.DataFrame:
    """Per loan: instalments due in the last 3, 6 and 12 months not paid on time, and paid over due in 12 months,
    as the payment rows stood at the cutoff."""
    earliest = months_before(cutoff, max(WINDOWS_MONTHS))
    # A delete's version holds the key only (curated histories keep no image for it): pick the payments by their
    # rows' due dates, then read every version of them, deletes included.
    due = payments.filter((pl.col("due_date") > earliest) & (pl.col("due_date") <= cutoff)).select("payment_id")
    versions = payments.join(due.unique(), on="payment_id", how="semi")
    known = as_of(versions.lazy(), "payment_id", cutoff_end(cutoff)).collect()
    late = pl.col("status").is_in(NOT_PAID_ON_TIME)
    return known.group_by("loan_id").agg(
        *((late & (pl.col("due_date") > months_before(cutoff, m))).sum().cast(pl.Int32).alias(f"missed_payments_{m}m")
          for m in WINDOWS_MONTHS),
        (pl.col("amount_paid").sum() / pl.col("amount_due").sum()).alias("paid_over_due_12m"),
    )


def _collateral_values(collaterals: pl.DataFrame, cutoff: date) -> pl.DataFrame:
    """Per loan: appraised value at origination (each collateral's first version), the latest appraisal on or
    before the cutoff, and the type of the largest collateral."""
    known = collaterals.filter(pl.col(KNOWN_AT) < cutoff_end(cutoff))
    first = (known.sort("collateral_id", LSN, OFFSET).unique("collateral_id", keep="first", maintain_order=True)
             .group_by("loan_id").agg(pl.col("appraised_value").sum().alias("_value_origination")))
    latest = as_of(known.lazy(), "collateral_id", cutoff_end(cutoff)).collect().filter(
        pl.col("appraisal_date") <= cutoff)
    current = latest.group_by("loan_id").agg(
        pl.col("appraised_value").sum().alias("_value_current"),
        pl.col("collateral_type").sort_by("appraised_value", descending=True).first().alias("collateral_type"))
    return first.join(current, on="loan_id", how="full", coalesce=True)


def features_at(known: KnownHistories, postcodes: pl.DataFrame, cutoff: date) -> pl.DataFrame:
    """The feature rows of the loans active at the end of `cutoff`."""
    end = cutoff_end(cutoff)
    loans = known.loans
    active = as_of(loans.lazy(), "loan_id", end).filter(pl.col("status") == "active").collect()
    borrowers = as_of(known.borrowers.lazy(), "borrower_id", end).collect()
    regions = borrower_regions(borrowers, postcodes).select(
        "borrower_id", pl.col("nuts3_code").str.slice(0, 4).alias("nuts2_code"))

    dpd = active.select("loan_id")
    for m in WINDOWS_MONTHS:
        dpd = dpd.join(_window_overlap(loans, cutoff_end(months_before(cutoff, m)), end).group_by("loan_id").agg(
            pl.col("days_past_due").max().alias(f"max_dpd_{m}m")), on="loan_id", how="left")

    monthly_rate = pl.col("interest_rate") / 12
    instalment = pl.when(monthly_rate > 0).then(
        pl.col("principal") * monthly_rate / (1 - (1 + monthly_rate).pow(-pl.col("term_months").cast(pl.Float64)))
    ).otherwise(pl.col("principal") / pl.col("term_months"))
    frame = (
        active.join(borrowers.select(HISTORY_COLUMNS["borrowers"]), on="borrower_id", how="left")
        .join(regions, on="borrower_id", how="left")
        .join(_region_default_rates(loans, regions, cutoff), on="nuts2_code", how="left")
        .join(_collateral_values(known.collaterals, cutoff), on="loan_id", how="left")
        .join(_payment_behaviour(known.payments, cutoff), on="loan_id", how="left")
        .join(dpd, on="loan_id", how="left")
        .with_columns(instalment.alias("instalment"), _months_between(pl.col("origination_date"), cutoff)
                      .alias("seasoning_months"))
    )
    return frame.select(
        pl.col("loan_id"), pl.lit(cutoff).alias("cutoff_date"), pl.col("borrower_id"),
        pl.col("product"), pl.col("borrower_type"), pl.col("employment_status"),
        pl.col("collateral_type").fill_null("none"), pl.col("country_code"), pl.col("nuts2_code"),
        _age_band(pl.col("birth_date"), cutoff).alias("age_band"),
        pl.col("annual_income"), pl.col("interest_rate"), pl.col("principal"),
        pl.col("term_months").cast(pl.Int32), pl.col("instalment"),
        (12 * pl.col("instalment") / pl.col("annual_income")).alias("debt_to_income"),
        (pl.col("principal") / pl.col("_value_origination")).alias("ltv_origination"),
        (pl.col("outstanding_principal") / pl.col("_value_current")).alias("ltv_current"),
        (pl.col("outstanding_principal") / pl.col("principal")).alias("utilisation"),
        pl.col("seasoning_months").cast(pl.Int32),
        (pl.col("term_months") - pl.col("seasoning_months")).clip(lower_bound=0).cast(pl.Int32)
        .alias("remaining_term_months"),
        pl.col("days_past_due").cast(pl.Int32),
        *(pl.col(f"max_dpd_{m}m").fill_null(pl.col("days_past_due")).cast(pl.Int32) for m in WINDOWS_MONTHS),
        *(pl.col(f"missed_payments_{m}m").fill_null(0).cast(pl.Int32) for m in WINDOWS_MONTHS),
        pl.col("paid_over_due_12m"),
        pl.col("nuts2_default_rate_12m"),
        pl.col("nuts2_loans_12m").cast(pl.Int32),
    ).sort("loan_id")


def loan_features(known: KnownHistories, postcodes: pl.DataFrame, cutoffs: Iterable[date]) -> pl.DataFrame:
    frames = [features_at(known, postcodes, cutoff) for cutoff in sorted(set(cutoffs))]
    return pl.concat(frames) if frames else pl.DataFrame(schema=feature_schema())


def feature_schema() -> pl.Schema:
    """The table's columns and types (what an empty table is created with)."""
    types: dict[str, pl.DataType] = {"loan_id": pl.Int64(), "cutoff_date": pl.Date(), "borrower_id": pl.Int64()}
    types |= {c: pl.String() for c in CATEGORICAL}
    ints = {"term_months", "seasoning_months", "remaining_term_months", "days_past_due", "nuts2_loans_12m",
            *(f"max_dpd_{m}m" for m in WINDOWS_MONTHS), *(f"missed_payments_{m}m" for m in WINDOWS_MONTHS)}
    types |= {c: pl.Int32() if c in ints else pl.Float64() for c in [*NUMERIC, "nuts2_loans_12m"]}
    return pl.Schema(types)


def cutoffs_between(first: date, last: date) -> list[date]:
    """Every month end from `first`'s month to `last`'s."""
    out, total = [], first.year * 12 + first.month - 1
    while (cutoff := month_end(total // 12, total % 12 + 1)) <= last:
        out.append(cutoff)
        total += 1
    return out


def cutoffs_known(known: KnownHistories, first: date, months: Sequence[date] | None = None) -> list[date]:
    """The month ends from `first` that the source clock has passed (later ones cannot be built yet)."""
    through = known.known_through
    if through is None:
        return []
    return [c for c in (months or cutoffs_between(first, through.date())) if cutoff_end(c) <= through]
