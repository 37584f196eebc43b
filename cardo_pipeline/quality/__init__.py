"""Data quality, free of Dagster: Pandera models built from the table registry's rules, validated in bounded
chunks (`validate`), and reconciliation of curated tables with the source database (`reconcile`). The Dagster
asset checks that run them are in `cardo_pipeline/defs/quality/`."""
