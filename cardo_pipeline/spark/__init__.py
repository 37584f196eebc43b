"""The Spark engine: the same ingest, apply-changes and feature semantics as the local engine, on pyspark with the
Delta, Iceberg and Kafka-source jars (ARCHITECTURE section 14). No Dagster here: the assets pick an engine."""
