"""The Debezium event contract (ARCHITECTURE section 4): how change events look on the servicing topics.

`encode` turns row changes into the exact key and value JSON that Debezium 3.7 (pgoutput, JsonConverter with
schemas) writes, for bulk loads and benchmarks that bypass Postgres; a decoder of the same messages will live
here too. Everything is driven by the table registry in `cardo_pipeline.tables`: no per-table code.
"""
