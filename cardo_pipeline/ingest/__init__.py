"""Raw CDC ingestion (ARCHITECTURE section 6): Kafka topics into append-only Delta tables, exactly once.

No Dagster here: `defs/raw` wires these functions into assets, a sensor, and the `cardo replay` command.
"""
