"""Raw CDC tables: `raw/<table>` per source table, `raw/_dead_letter`, their checks and the Kafka offsets sensor."""
