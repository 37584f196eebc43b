"""The Iceberg mirror of the curated current state."""
