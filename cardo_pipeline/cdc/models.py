"""Pandera models of the tables this package lays out (`arrow_types`): each raw CDC table and the dead letters.

- `raw_model` (ERROR): the log is well formed: ops of the event contract, where each kind of event carries its key,
  images and position, and the Kafka coordinates present. A failure means the decoder wrote something it should not
  have, so the curated tables wait.
- `raw_images_model` (WARN): the after-images keep the source contract's rules (ranges, enumerations, NOT NULL,
  maturity after origination). Raw is the faithful record of what the source said, so it warns; the curated models
  are where a value that breaks the contract stops.
- `dead_letter_model` (ERROR): every dead letter says where it came from and why.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from cardo_pipeline.cdc.arrow_types import DEAD_LETTER_SCHEMA, raw_arrow_schema
from cardo_pipeline.quality.models import (
    Severity,
    before_check,
    describe_rule,
    model,
    model_title,
    polars_dtypes,
    row_check,
    rule_expression,
)
from cardo_pipeline.tables import SourceTable

OPS = ["c", "u", "d", "r", "t", "tombstone"]  # Debezium's ops, and a Kafka tombstone (a null value)
KAFKA_KEY = ["topic", "partition", "offset"]


def raw_model(table: SourceTable) -> pa.DataFrameSchema:
    dtypes = polars_dtypes(raw_arrow_schema(table))
    op = pl.col("op")

    def column(name: str, nullable: bool = True, checks=None) -> pa.Column:
        # The images' structs grow with evolved source columns: any struct passes the layout check.
        dtype = pl.Struct if name in ("before", "after") else dtypes[name]
        return pa.Column(dtype, nullable=nullable, checks=checks)

    return model(
        f"Raw{model_title(table)}",
        {
            "op": column("op", False, pa.Check.isin(OPS)),
            "key": column("key"),
            "before": column("before"),
            "after": column("after"),
            "unchanged_toast": column("unchanged_toast"),
            "source_lsn": column("source_lsn", checks=pa.Check.ge(0)),
            "source_tx_id": column("source_tx_id"),
            "source_ts": column("source_ts"),
            "source_table": column("source_table", checks=pa.Check.eq(table.name)),
            "snapshot": column("snapshot"),
            "topic": column("topic", False),
            "partition": column("partition", False, pa.Check.ge(0)),
            "offset": column("offset", False, pa.Check.ge(0)),
            "kafka_timestamp": column("kafka_timestamp"),
            "ingested_at": column("ingested_at", False),
        },
        checks=[
            row_check("an upsert carries its after-image", ~op.is_in(["c", "u", "r"]) | pl.col("after").is_not_null()),
            row_check("a delete carries its before-image", (op != "d") | pl.col("before").is_not_null()),
            row_check("every event but a truncate has a key", (op == "t") | pl.col("key").is_not_null()),
            row_check("every event has its LSN and commit time", (op == "tombstone") | (
                pl.col("source_lsn").is_not_null() & pl.col("source_ts").is_not_null())),
        ],
        severity=Severity.ERROR,
        key=KAFKA_KEY,
        description=f"Raw CDC log of `{table.name}`: one row per Kafka message, in the event contract's shape.",
    )


def raw_images_model(table: SourceTable) -> pa.DataFrameSchema:
    after = pl.col("after")
    checks = []
    for column in table.columns:
        value = after.struct.field(column.name)
        if not column.nullable and column.name not in table.toasted:
            checks.append(row_check(f"after.{column.name} is not null", after.is_null() | value.is_not_null()))
        checks += [row_check(f"after.{column.name} {describe_rule(rule)}", rule_expression(rule, value))
                   for rule in column.rules]
    checks += [before_check(rule, after.struct.field, prefix="after: ") for rule in table.row_rules]
    return model(
        f"Raw{model_title(table)}Images",
        {"after": pa.Column(pl.Struct, nullable=True)},
        checks=checks,
        severity=Severity.WARN,
        key=KAFKA_KEY,
        description=f"The after-images in raw `{table.name}` keep the source contract's rules.",
    )


def dead_letter_model() -> pa.DataFrameSchema:
    dtypes = polars_dtypes(DEAD_LETTER_SCHEMA)
    return model(
        "DeadLetters",
        {
            "topic": pa.Column(dtypes["topic"]),
            "partition": pa.Column(dtypes["partition"], checks=pa.Check.ge(0)),
            "offset": pa.Column(dtypes["offset"], checks=pa.Check.ge(0)),
            "key": pa.Column(dtypes["key"], nullable=True),
            "value": pa.Column(dtypes["value"], nullable=True),
            "error": pa.Column(dtypes["error"], checks=pa.Check.str_length(min_value=1)),
            "dead_lettered_at": pa.Column(dtypes["dead_lettered_at"]),
        },
        unique=KAFKA_KEY,  # a retried batch never dead-letters a message twice
        severity=Severity.ERROR,
        key=KAFKA_KEY,
        description="Messages that could not be decoded: where each came from and why.",
    )
