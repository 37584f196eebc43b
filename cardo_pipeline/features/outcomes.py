"""`features/loan_default_outcomes`: the PD model's target. For each cutoff with a whole outcome window behind the
source clock, each loan active at the cutoff, and whether it defaulted (status defaulted or written off) within the
12 months after it. The outcome reads what happened after the cutoff, so it lives apart from the features, which
never do: a features partition is final at its cutoff, its outcome only 12 months later.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import polars as pl

from cardo_pipeline.features.clock import KNOWN_AT, as_of, cutoff_end
from cardo_pipeline.features.loan_features import DEFAULTED, KnownHistories, months_before

OUTCOME_MONTHS = 12


def outcome_window_end(cutoff: date) -> date:
    """The last day of the outcome window of a month-end cutoff."""
    return months_before(cutoff, -OUTCOME_MONTHS)


def cutoffs_with_outcome(known: KnownHistories, cutoffs: Iterable[date]) -> list[date]:
    """The cutoffs whose 12-month outcome window the source clock has passed."""
    through = known.known_through
    return [] if through is None else [c for c in sorted(set(cutoffs))
                                       if cutoff_end(outcome_window_end(c)) <= through]


def default_outcomes(known: KnownHistories, cutoffs: Iterable[date]) -> pl.DataFrame:
    """(loan_id, cutoff_date, default_12m, defaulted_on) for the loans active at each cutoff with a whole window."""
    frames = []
    for cutoff in cutoffs_with_outcome(known, cutoffs):
        start, end = cutoff_end(cutoff), cutoff_end(outcome_window_end(cutoff))
        active = as_of(known.loans.lazy(), "loan_id", start).filter(pl.col("status") == "active").select("loan_id")
        defaults = (known.loans.lazy().filter(pl.col("status").is_in(DEFAULTED) & (pl.col(KNOWN_AT) >= start)
                                              & (pl.col(KNOWN_AT) < end))
                    .group_by("loan_id").agg(pl.col(KNOWN_AT).min().dt.date().alias("defaulted_on")))
        frames.append(active.join(defaults, on="loan_id", how="left").select(
            "loan_id", pl.lit(cutoff).alias("cutoff_date"),
            pl.col("defaulted_on").is_not_null().cast(pl.Int8).alias("default_12m"), "defaulted_on").collect())
    return pl.concat(frames).sort("cutoff_date", "loan_id") if frames else pl.DataFrame(schema=OUTCOME_SCHEMA)


OUTCOME_SCHEMA = pl.Schema({"loan_id": pl.Int64(), "cutoff_date": pl.Date(), "default_12m": pl.Int8(),
                            "defaulted_on": pl.Date()})
