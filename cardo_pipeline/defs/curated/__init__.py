"""The curated layer: current state and SCD2 history per source table, applied from raw."""
