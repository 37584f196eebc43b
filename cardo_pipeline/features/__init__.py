"""Loan-level features as of monthly cutoffs (point in time, from the curated SCD2 histories) and the PD model's
target. Plain library code: the Dagster assets in `defs/features` are glue around it."""
