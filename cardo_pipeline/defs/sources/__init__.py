"""The Debezium topics as observable source assets: `kafka/<table>`, one per source table, upstream of raw."""
