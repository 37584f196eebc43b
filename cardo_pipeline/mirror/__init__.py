"""Mirrors of the curated tables in other table formats (Apache Iceberg)."""
