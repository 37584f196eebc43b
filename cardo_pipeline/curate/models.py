"""Pandera models of the curated tables this package writes (`storage.current_schema`, `storage.history_schema`).

- `current_model` (ERROR): one row per key, every column typed as stored, NOT NULL where the source says so, and
  the source contract's rules (ranges, enumerations, maturity after origination). A failure stops the mirror and
  everything else built on the table.
- `history_model` (ERROR): SCD2 well formed: one current row per key, each version's valid_from before its valid_to,
  a current row open, every version (not the delete rows, which carry only their key) complete.
- `history_values_model` (WARN): the versions keep the source contract's rules. The history is the record of what
  the source said, a value later corrected included, so it warns where the current state stops.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from cardo_pipeline.curate.apply import LSN, OFFSET, SOURCE_TS, VALID_FROM
from cardo_pipeline.curate.storage import current_schema, history_schema
from cardo_pipeline.quality.models import (
    Severity,
    before_check,
    model,
    model_title,
    polars_dtypes,
    registry_columns,
    row_check,
    unique_where,
)
from cardo_pipeline.tables import SourceTable


def current_model(table: SourceTable, name: str | None = None, description: str | None = None
                  ) -> pa.DataFrameSchema:
    dtypes = polars_dtypes(current_schema(table))
    return model(
        name or f"Curated{model_title(table)}",
        {
            **registry_columns(table.columns, dtypes),
            LSN: pa.Column(dtypes[LSN], checks=pa.Check.ge(0)),
            OFFSET: pa.Column(dtypes[OFFSET], checks=pa.Check.ge(0)),
            SOURCE_TS: pa.Column(dtypes[SOURCE_TS], nullable=True),
        },
        checks=[before_check(rule) for rule in table.row_rules],
        unique=list(table.primary_key),
        severity=Severity.ERROR,
        key=list(table.primary_key),
        description=description or f"Current state of `{table.name}`: the source contract, one row per key.",
    )


def history_model(table: SourceTable) -> pa.DataFrameSchema:
    dtypes = polars_dtypes(history_schema(table))
    key = list(table.primary_key)
    from_lsn, from_offset = (pl.col(c) for c in VALID_FROM)
    to_lsn, to_offset = pl.col("valid_to_lsn"), pl.col("valid_to_offset")
    is_current, is_deleted = pl.col("is_current"), pl.col("is_deleted")
    required = [c.name for c in table.columns if not c.nullable and c.name not in table.toasted]
    return model(
        f"Curated{model_title(table)}History",
        {
            **registry_columns([c for c in table.columns if c.name in key], dtypes),
            **registry_columns([c for c in table.columns if c.name not in key], dtypes, with_rules=False,
                               nullable=True),
            **{name: pa.Column(dtypes[name], nullable=False) for name in (*VALID_FROM, "is_current", "is_deleted")},
            **{name: pa.Column(dtypes[name], nullable=True)
               for name in ("valid_to_lsn", "valid_to_offset", "valid_from_ts", "valid_to_ts")},
        },
        checks=[
            row_check("valid_from before valid_to", to_lsn.is_null() | (from_lsn < to_lsn) | (
                (from_lsn == to_lsn) & (from_offset < to_offset))),
            row_check("valid_from_ts <= valid_to_ts", pl.col("valid_to_ts").is_null() | pl.col(
                "valid_from_ts").is_null() | (pl.col("valid_from_ts") <= pl.col("valid_to_ts"))),
            row_check("is_current exactly when valid_to is open", is_current == to_lsn.is_null()),
            row_check("a version has every NOT NULL column",
                      is_deleted | pl.all_horizontal([pl.col(c).is_not_null() for c in required])),
            unique_where("one is_current row per key", key, "is_current"),
        ],
        unique=[*key, *VALID_FROM],  # a version's identity
        severity=Severity.ERROR,
        key=[*key, *VALID_FROM],
        description=f"SCD2 history of `{table.name}`: versions well formed, one current row per key.",
    )


def history_values_model(table: SourceTable) -> pa.DataFrameSchema:
    dtypes = polars_dtypes(history_schema(table))
    return model(
        f"Curated{model_title(table)}HistoryValues",
        registry_columns([c for c in table.columns if c.rules], dtypes, nullable=True),
        checks=[before_check(rule) for rule in table.row_rules],
        severity=Severity.WARN,
        key=[*table.primary_key, *VALID_FROM],
        description=f"Every version in the history of `{table.name}` keeps the source contract's rules.",
    )
