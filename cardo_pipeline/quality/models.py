"""Building blocks of the Pandera models (`pandera.polars`): the registry's rules as checks, Arrow layouts as dtypes,
and the two things a model says beyond Pandera's own fields (its severity and its key).

The models themselves live beside the code that defines each table (`cdc/models.py` for raw and dead letters,
`curate/models.py`, `mirror/models.py`, and the same for every later table); `quality.validate` runs them.

Conventions a model follows, so that it can be validated in bounded chunks:
- column checks and row checks look at one row at a time: they run chunk by chunk;
- `unique=` and checks made by `table_check` look across rows: they run once, on the whole table's few columns
  they name (a key column of 10M rows is 80 MB), never on a chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum

import pandera.polars as pa
import polars as pl
import pyarrow as pa_arrow

from cardo_pipeline.tables import Before, Column, OneOf, Range, SourceTable

SCOPE = "scope"  # a check's statistics entry: "row" (chunk by chunk) or "table" (across rows)
COLUMNS = "columns"  # a frame check's statistics entry: the columns it reads
UNIQUE_WHERE = "unique_where"  # a table check's statistics entry: (columns, flag column) of `unique_where`
EXPRESSION = "expression"  # a frame check's statistics entry: its polars expression (True where a row is valid)


class Severity(StrEnum):
    ERROR = "ERROR"  # a failure stops what depends on the table (a blocking Dagster check)
    WARN = "WARN"  # a failure is reported; nothing stops


def model(name: str, columns: dict[str, pa.Column], *, severity: Severity, key: Sequence[str],
          description: str, checks: Sequence[pa.Check] = (), unique: Sequence[str] | None = None
          ) -> pa.DataFrameSchema:
    """A Pandera model with its severity and key (the columns a failing row is shown by) in its metadata."""
    return pa.DataFrameSchema(columns, checks=list(checks), name=name, description=description,
                              unique=list(unique) if unique else None,
                              metadata={"severity": str(severity), "key": list(key)})


def model_title(table: SourceTable) -> str:
    """`loans` -> `Loans`: the part of a model's name that names its source table."""
    return "".join(part.title() for part in table.name.split("_"))


def severity_of(schema: pa.DataFrameSchema) -> Severity:
    return Severity((schema.metadata or {}).get("severity", Severity.ERROR))


def key_of(schema: pa.DataFrameSchema) -> list[str]:
    return list((schema.metadata or {}).get("key", []))


def polars_dtypes(schema: pa_arrow.Schema) -> dict[str, pl.DataType]:
    """The dtypes polars reads a lake table of this Arrow layout as: text stored as string views reads as String,
    and timestamps as microseconds (the only unit Delta and Iceberg store; Kafka's millisecond times widen)."""
    def stored(dtype: pl.DataType) -> pl.DataType:
        return pl.Datetime("us", dtype.time_zone) if isinstance(dtype, pl.Datetime) else dtype

    return {name: stored(dtype) for name, dtype in pl.from_arrow(schema.empty_table()).schema.items()}


def rule_checks(column: Column) -> list[pa.Check]:
    """A registry column's rules as Pandera column checks (nulls are left to `nullable`)."""
    checks = []
    for rule in column.rules:
        if isinstance(rule, OneOf):
            checks.append(pa.Check.isin(list(rule.values)))
        elif isinstance(rule, Range):
            if rule.low is not None and rule.high is not None:
                checks.append(pa.Check.in_range(rule.low, rule.high, include_min=rule.low_inclusive,
                                                include_max=rule.high_inclusive))
            elif rule.low is not None:
                checks.append(pa.Check.ge(rule.low) if rule.low_inclusive else pa.Check.gt(rule.low))
            elif rule.high is not None:
                checks.append(pa.Check.le(rule.high) if rule.high_inclusive else pa.Check.lt(rule.high))
    return checks


def rule_expression(rule: OneOf | Range, value: pl.Expr) -> pl.Expr:
    """A column rule as a polars expression that holds for valid (and null) values: for values nested in a struct,
    where Pandera's column checks cannot reach."""
    if isinstance(rule, OneOf):
        valid = value.is_in(list(rule.values))
    else:
        valid = pl.lit(True)
        if rule.low is not None:
            valid &= (value >= rule.low) if rule.low_inclusive else (value > rule.low)
        if rule.high is not None:
            valid &= (value <= rule.high) if rule.high_inclusive else (value < rule.high)
    return value.is_null() | valid


def describe_rule(rule: OneOf | Range) -> str:
    return f"isin({list(rule.values)})" if isinstance(rule, OneOf) else f"in {rule.describe()}"


def row_check(name: str, valid: pl.Expr, *, description: str = "") -> pa.Check:
    """A check on each row (True where the row is valid), run chunk by chunk."""
    return _frame_check(name, valid, "row", description)


def table_check(name: str, valid: pl.Expr, *, description: str = "") -> pa.Check:
    """A check across rows (`valid` may use windows, e.g. `is_duplicated`), run once on the columns it reads."""
    return _frame_check(name, valid, "table", description)


def unique_where(name: str, columns: Sequence[str], where: str, *, description: str = "") -> pa.Check:
    """`columns` unique among the rows where the boolean column `where` holds (one current row per key)."""
    flag = pl.col(where)
    check = table_check(name, ~(flag & pl.struct([*columns, where]).is_duplicated()), description=description)
    check.statistics[UNIQUE_WHERE] = (list(columns), where)  # the validator finds these by sorting, not hashing
    return check


def _frame_check(name: str, valid: pl.Expr, scope: str, description: str) -> pa.Check:
    def check(data) -> pl.LazyFrame:
        return data.lazyframe.select(valid.alias(name))

    # Pandera keeps `statistics` on the check without passing them to it: the validator reads them.
    return pa.Check(check, name=name, description=description or name,
                    statistics={SCOPE: scope, COLUMNS: sorted(set(valid.meta.root_names())), EXPRESSION: valid})


def before_check(rule: Before, value: Callable[[str], pl.Expr] = pl.col, prefix: str = "") -> pa.Check:
    """A `Before` rule as a row check; `value` reaches a column (a struct's field, say), `prefix` names where."""
    earlier, later = value(rule.earlier), value(rule.later)
    holds = (earlier < later) if rule.strict else (earlier <= later)
    return row_check(prefix + rule.describe(), earlier.is_null() | later.is_null() | holds)


def registry_columns(columns: Sequence[Column], dtypes: dict[str, pl.DataType], *, with_rules: bool = True,
                     nullable: bool | None = None) -> dict[str, pa.Column]:
    """Pandera columns for registry columns: their dtype as stored, nullability from the registry (or forced), and
    their rules as checks (or none)."""
    return {
        c.name: pa.Column(dtypes[c.name], nullable=c.nullable if nullable is None else nullable,
                          checks=rule_checks(c) if with_rules else None)
        for c in columns
    }
