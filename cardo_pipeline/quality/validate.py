"""Validate a table against a Pandera model (`quality.models`) in bounded memory, and report what failed.

Memory stays bounded by the chunk, never the table: the layout (columns present, dtypes) is checked on an empty
frame of the table's schema; the row checks run on chunks of the columns they read (a column with no check is never
read: the loans' notes, say); the checks across rows (`unique`, `table_check`) run once on the few columns they
name, for the whole table. Tables are read through polars (`pl.scan_delta` applies deletion vectors).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pandera.polars as pa
import polars as pl

from cardo_pipeline.ingest.delta_log import load_table
from cardo_pipeline.quality.models import COLUMNS, EXPRESSION, SCOPE, UNIQUE_WHERE, Severity, key_of, severity_of

DEFAULT_CHUNK_ROWS = 200_000
SAMPLE_ROWS = 20
ROW_INDEX = "__cardo_row"
VALUE_CHARS = 80  # a failing value is shown up to this many characters (a row of JSON, a long note)


class TableSource(Protocol):
    """A table as the validator reads it."""

    def schema(self) -> pl.Schema: ...

    def batches(self, columns: list[str], chunk_rows: int) -> Iterable[pl.DataFrame]:
        """The table's rows in order, `columns` only, at most `chunk_rows` at a time."""

    def columns(self, columns: list[str]) -> pl.DataFrame:
        """The whole table, `columns` only (few and narrow: keys and flags)."""


class LazySource:
    """A table behind a polars LazyFrame (a Delta table: `delta_source`)."""

    def __init__(self, frame: pl.LazyFrame):
        self.frame = frame

    def schema(self) -> pl.Schema:
        return self.frame.collect_schema()

    def batches(self, columns: list[str], chunk_rows: int) -> Iterator[pl.DataFrame]:
        yield from self.frame.select(columns).collect_batches(chunk_size=chunk_rows)

    def columns(self, columns: list[str]) -> pl.DataFrame:
        return self.frame.select(columns).collect()


def delta_source(uri: str) -> LazySource | None:
    """A Delta table read by polars (deletion vectors applied), or None when there is no table yet."""
    if load_table(uri) is None:
        return None
    return LazySource(pl.scan_delta(uri))


@dataclass
class ValidationReport:
    model: str
    severity: Severity
    rows_checked: int = 0
    failure_cases: int = 0  # a row failing two rules counts twice
    failing_rows: int = 0
    by_column: Counter = field(default_factory=Counter)
    by_rule: Counter = field(default_factory=Counter)
    samples: list[dict] = field(default_factory=list)  # at most SAMPLE_ROWS failing rows, key columns first
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.failure_cases == 0


def validate(schema: pa.DataFrameSchema, source: TableSource, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
             sample_rows: int = SAMPLE_ROWS) -> ValidationReport:
    started = time.perf_counter()
    report = ValidationReport(schema.name or "model", severity_of(schema))
    table_schema = source.schema()
    present = set(table_schema.names())
    key = [k for k in key_of(schema) if k in present]

    # 1. The layout: columns present with their dtypes (an empty frame: no data checks fire).
    _collect(report, _errors(schema, pl.DataFrame(schema=table_schema)), schema, offset=0, rows=None, key=key,
             sample_rows=sample_rows)

    # 2. Row checks, chunk by chunk, on the columns they read.
    row_schema = _row_checks(schema, present)
    read = _unique([*key, *row_schema.columns, *_frame_columns(row_schema)])
    if read:
        offset = 0
        for chunk in source.batches(read, chunk_rows):
            _collect(report, _errors(row_schema, chunk), row_schema, offset=offset, rows=chunk, key=key,
                     sample_rows=sample_rows)
            offset += chunk.height
        report.rows_checked = offset
    else:
        report.rows_checked = source.columns([table_schema.names()[0]]).height

    # 3. Checks across rows, once, on the whole table's few columns they name.
    across = _across_rows(schema, present)
    if across is not None:
        frame = source.columns(_unique([*key, *(across.unique or []), *across.columns, *_frame_columns(across)]))
        _collect(report, _across_failures(across, frame), across, offset=0, rows=frame, key=key,
                 sample_rows=sample_rows)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _across_failures(schema: pa.DataFrameSchema, frame: pl.DataFrame) -> pl.DataFrame | None:
    """The failures of the checks across rows, as Pandera reports them, found by polars first: Pandera's own
    uniqueness check took ~200 MB per million rows (10M-row history: GBs), polars' is_duplicated a fraction, and
    only the failing rows (few, or a table to fix) go through Pandera's reporting."""
    failing: list[pl.Series] = []
    if schema.unique:
        failing.append(_duplicated(frame, schema.unique))
    failing += [_duplicated(frame, [name]) for name in schema.columns]
    for check in schema.checks:
        if UNIQUE_WHERE in check.statistics:
            columns, where = check.statistics[UNIQUE_WHERE]
            failing.append(_duplicated(frame, columns, where))
        else:
            failing.append(frame.select(~check.statistics[EXPRESSION]).to_series())
    suspects = frame.with_row_index(ROW_INDEX).filter(pl.any_horizontal(failing))
    if suspects.is_empty():
        return None
    errors = _errors(schema, suspects.drop(ROW_INDEX))
    if errors is None:  # cannot happen for these checks (they fail on the rows that failed): report nothing
        return None
    # a failure's index is its position among the suspects: back to the row's position in the table
    return errors.with_columns(suspects[ROW_INDEX].gather(errors["index"]).cast(pl.Int64).alias("index"))


def _duplicated(frame: pl.DataFrame, columns: list[str], where: str | None = None) -> pl.Series:
    """Whether each row's `columns` repeat another's (among the rows where `where` holds), found by sorting: ~40
    bytes a row where polars' hash-based is_duplicated took ~190 (10M keys: 0.4 GB instead of 1.9)."""
    rows = frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias(ROW_INDEX), *columns)
    if where is not None:
        rows = rows.filter(frame[where])
    rows = rows.sort(columns)
    same = pl.all_horizontal([pl.col(c) == pl.col(c).shift(1) for c in columns]).fill_null(False)
    repeated = rows.filter(same | same.shift(-1).fill_null(False))[ROW_INDEX]
    mask = pl.zeros(frame.height, pl.Boolean, eager=True)
    return mask.scatter(repeated, True) if len(repeated) else mask


def _errors(schema: pa.DataFrameSchema, frame: pl.DataFrame) -> pl.DataFrame | None:
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        return errors.failure_cases
    return None


def _collect(report: ValidationReport, failures: pl.DataFrame | None, schema: pa.DataFrameSchema, *, offset: int,
             rows: pl.DataFrame | None, key: list[str], sample_rows: int) -> None:
    if failures is None or failures.is_empty():
        return
    report.failure_cases += failures.height
    # a layout failure (a missing column, a wrong dtype) is a case without a row
    report.failing_rows += failures["index"].drop_nulls().n_unique()
    for row in failures.iter_rows(named=True):
        column, rule, value = _describe(row, schema, rows)
        report.by_column[column] += 1
        report.by_rule[rule] += 1
        if len(report.samples) < sample_rows:
            sample = {"row": None if row["index"] is None else offset + row["index"]}
            if rows is not None and row["index"] is not None:
                sample |= {k: _short(rows[k][row["index"]]) for k in key if k in rows.columns}
            sample |= {"column": column, "rule": rule, "value": _short(value)}
            report.samples.append(sample)


def _describe(failure: dict, schema: pa.DataFrameSchema, rows: pl.DataFrame | None) -> tuple[str, str, object]:
    """(column, rule, value) of a failure case, in words a reader of the check knows: a row check shows the
    columns it reads, not the whole row as JSON; a key check names the key."""
    check, value = failure["check"], failure["failure_case"]
    if failure["schema_context"] == "Column":
        return failure["column"], check, value
    if check == "multiple_fields_uniqueness":
        key = ", ".join(schema.unique or [])
        return key, f"unique ({key})", value
    if check == "column_in_dataframe":
        return value, "column present", value
    columns = next(((c.statistics or {}).get(COLUMNS, []) for c in schema.checks if c.name == check), [])
    if rows is not None and failure["index"] is not None and columns and set(columns) <= set(rows.columns):
        value = ", ".join(f"{c}={rows[c][failure['index']]}" for c in columns)
    return ", ".join(columns) or "(row)", check, value


def _short(value: object) -> object:
    if isinstance(value, str) and len(value) > VALUE_CHARS:
        return value[: VALUE_CHARS - 1] + "…"
    return value


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _frame_columns(schema: pa.DataFrameSchema) -> list[str]:
    return _unique(c for check in schema.checks for c in (check.statistics or {}).get(COLUMNS, []))


def _is_row_check(check: pa.Check) -> bool:
    return (check.statistics or {}).get(SCOPE, "row") == "row"


def _row_checks(schema: pa.DataFrameSchema, present: set[str]) -> pa.DataFrameSchema:
    """The model's per-row part, on the columns present: what needs reading is what has a check or may not be
    null (dtypes were checked on the layout)."""
    columns = {
        name: pa.Column(None, checks=column.checks, nullable=column.nullable, name=name)
        for name, column in schema.columns.items()
        if name in present and (column.checks or not column.nullable)
    }
    checks = [c for c in schema.checks if _is_row_check(c) and set(c.statistics.get(COLUMNS, [])) <= present]
    return pa.DataFrameSchema(columns, checks=checks, name=schema.name)


def _across_rows(schema: pa.DataFrameSchema, present: set[str]) -> pa.DataFrameSchema | None:
    unique = [c for c in schema.unique or [] if c in present]
    unique_columns = {name for name, column in schema.columns.items() if column.unique and name in present}
    checks = [c for c in schema.checks
              if not _is_row_check(c) and set(c.statistics.get(COLUMNS, [])) <= present]
    if not (unique or unique_columns or checks):
        return None
    columns = {name: pa.Column(None, unique=True, nullable=True, name=name) for name in unique_columns}
    return pa.DataFrameSchema(columns, checks=checks, unique=unique or None, name=schema.name)
