"""`features/loan_snapshots`: each loan's state as known at each monthly cutoff, the base of the loan tape.

A cutoff's rows are the loans active at its end, the defaulted ones not yet written off (the non-performing stock),
and also those that stopped being active during its month (repaid, defaulted or written off since the previous
cutoff) and those originated in the month, whatever their state: a month's default rate and prepayment rate count
the loans that left the performing book in it, which a tape of the active loans alone cannot show. A loan repaid or
written off before the previous cutoff is no longer on the tape. Each row carries the loan's
status and outstanding principal at the previous cutoff (null for a loan not known then), and its borrower's
country and NUTS3 region at the cutoff. Every value is read as of its cutoff (`clock.as_of`), as `loan_features`
reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import polars as pl

from cardo_pipeline.features.clock import as_of, cutoff_end
from cardo_pipeline.features.loan_features import (
    KnownHistories,
    _months_between,
    borrower_regions,
    months_before,
)

ACTIVE = "active"
DEFAULTED = "defaulted"  # non-performing, not yet written off: stays on the tape (the book's NPL stock)
SNAPSHOT_COLUMNS = ["loan_id", "cutoff_date", "borrower_id", "product", "principal", "interest_rate", "term_months",
                    "origination_date", "seasoning_months", "outstanding_principal", "status", "days_past_due",
                    "previous_status", "previous_outstanding_principal", "country_code", "nuts3_code"]


def snapshot_schema() -> pl.Schema:
    """The table's columns and types (what an empty table is created with)."""
    return pl.Schema({
        "loan_id": pl.Int64(), "cutoff_date": pl.Date(), "borrower_id": pl.Int64(), "product": pl.String(),
        "principal": pl.Float64(), "interest_rate": pl.Float64(), "term_months": pl.Int32(),
        "origination_date": pl.Date(), "seasoning_months": pl.Int32(), "outstanding_principal": pl.Float64(),
        "status": pl.String(), "days_past_due": pl.Int32(), "previous_status": pl.String(),
        "previous_outstanding_principal": pl.Float64(), "country_code": pl.String(), "nuts3_code": pl.String(),
    })


def snapshots_at(known: KnownHistories, postcodes: pl.DataFrame, cutoff: date) -> pl.DataFrame:
    """The tape's rows of `cutoff` (a month end): the loans active at its end, closed in its month or originated in
    it, as known at its end."""
    end, previous_end = cutoff_end(cutoff), cutoff_end(months_before(cutoff, 1))
    now = as_of(known.loans.lazy(), "loan_id", end).collect()
    before = as_of(known.loans.lazy(), "loan_id", previous_end).select(
        "loan_id", pl.col("status").alias("previous_status"),
        pl.col("outstanding_principal").alias("previous_outstanding_principal")).collect()
    borrowers = as_of(known.borrowers.lazy(), "borrower_id", end).collect()
    regions = borrower_regions(borrowers, postcodes)
    on_tape = (pl.col("status").is_in([ACTIVE, DEFAULTED]) | (pl.col("previous_status") == ACTIVE)
               | pl.col("previous_status").is_null())
    frame = (
        now.join(before, on="loan_id", how="left").filter(on_tape)
        .join(borrowers.select("borrower_id", "country_code"), on="borrower_id", how="left")
        .join(regions, on="borrower_id", how="left")
    )
    schema = snapshot_schema()
    return frame.select(
        pl.col("loan_id"), pl.lit(cutoff).alias("cutoff_date"), pl.col("borrower_id"), pl.col("product"),
        pl.col("principal"), pl.col("interest_rate"), pl.col("term_months"), pl.col("origination_date"),
        _months_between(pl.col("origination_date"), cutoff).alias("seasoning_months"),
        pl.col("outstanding_principal"), pl.col("status"), pl.col("days_past_due"), pl.col("previous_status"),
        pl.col("previous_outstanding_principal"), pl.col("country_code"), pl.col("nuts3_code"),
    ).cast(dict(schema)).sort("loan_id")


def loan_snapshots(known: KnownHistories, postcodes: pl.DataFrame, cutoffs: Iterable[date]) -> pl.DataFrame:
    """The tape's rows of every cutoff, sorted by cutoff and loan."""
    frames = [snapshots_at(known, postcodes, cutoff) for cutoff in sorted(set(cutoffs))]
    return pl.concat(frames) if frames else pl.DataFrame(schema=snapshot_schema())
