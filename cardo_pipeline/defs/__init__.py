"""Dagster wiring, one folder per domain (sources, raw, curated, iceberg, reference, features, models, marts).

Assets here are glue: read through a resource, call one library function, write, return metadata.
"""
