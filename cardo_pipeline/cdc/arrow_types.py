"""Arrow types of the raw CDC tables: Postgres column type -> Arrow type, the raw row and dead-letter schemas.

What belongs here: the registry-driven layout of what `cardo_pipeline.cdc.decode` produces (and the raw Delta
tables store), and the one rule deciding when a value of one Arrow type may land in a column of another
(`is_lossless_widening`). How Debezium's Connect schemas map onto these types lives in `decode_connect`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pyarrow as pa

from cardo_pipeline.tables import Column, SourceTable

UTC_MICROS = pa.timestamp("us", tz="UTC")
KAFKA_TIMESTAMP = pa.timestamp("ms", tz="UTC")
MAX_DECIMAL128_PRECISION = 38

_NUMERIC = re.compile(r"(?:numeric|decimal)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_STRING_TYPES = re.compile(
    r"text|uuid|jsonb?|xml|citext|(?:varchar|character varying|char|character|bpchar)(?:\s*\(\d+\))?"
)
_FIXED_TYPES: dict[str, pa.DataType] = {
    "bigint": pa.int64(), "int8": pa.int64(),
    "integer": pa.int32(), "int": pa.int32(), "int4": pa.int32(),
    "smallint": pa.int16(), "int2": pa.int16(),
    "boolean": pa.bool_(), "bool": pa.bool_(),
    "real": pa.float32(), "float4": pa.float32(),
    "double precision": pa.float64(), "float8": pa.float64(),
    "date": pa.date32(),
    "timestamptz": UTC_MICROS, "timestamp with time zone": UTC_MICROS,
    "timestamp": pa.timestamp("us"), "timestamp without time zone": pa.timestamp("us"),
    "time": pa.time64("us"), "time without time zone": pa.time64("us"),
    "bytea": pa.binary(),
}


def decimal_type(precision: int, scale: int) -> pa.DataType:
    if precision <= MAX_DECIMAL128_PRECISION:
        return pa.decimal128(precision, scale)
    return pa.decimal256(precision, scale)


def arrow_type_for_column(column: Column) -> pa.DataType:
    """The Arrow type a registry column decodes to (Postgres keeps microseconds, so do we)."""
    pg_type = column.pg_type.strip().lower()
    if pg_type in _FIXED_TYPES:
        return _FIXED_TYPES[pg_type]
    if match := _NUMERIC.fullmatch(pg_type):
        return decimal_type(int(match.group(1)), int(match.group(2)))
    if _STRING_TYPES.fullmatch(pg_type):
        return pa.string()
    raise ValueError(f"column {column.name}: no Arrow type for Postgres type {column.pg_type!r} yet")


def row_struct_type(
    table: SourceTable, new_columns: Mapping[str, pa.DataType] | None = None
) -> pa.StructType:
    """The type of the before/after images: registry columns in table order, then evolved columns.

    Every member is nullable, NOT NULL ones included: images of tombstones and truncates are null as a whole,
    and a column dropped in Postgres keeps arriving as null.
    """
    fields = [pa.field(c.name, arrow_type_for_column(c)) for c in table.columns]
    fields += [pa.field(name, data_type) for name, data_type in (new_columns or {}).items()]
    return pa.struct(fields)


def raw_arrow_schema(table: SourceTable, new_columns: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    """The raw table's row layout: one row per consumed Kafka message that decoded (tombstones included).

    `new_columns` are the evolved columns (present in messages, absent from the registry), appended to both
    images in the order given; `DecodedBatch.new_columns` is exactly what to pass for a decoded batch.
    """
    image = row_struct_type(table, new_columns)
    return pa.schema([
        pa.field("op", pa.string()),  # c, u, d, r, t, or "tombstone" for a null value
        pa.field("key", pa.string()),  # the key's payload as compact JSON, e.g. {"loan_id":5}
        pa.field("before", image),
        pa.field("after", image),
        pa.field("unchanged_toast", pa.list_(pa.string())),  # columns that arrived as the TOAST placeholder
        pa.field("source_lsn", pa.int64()),
        pa.field("source_tx_id", pa.int64()),
        pa.field("source_ts", UTC_MICROS),  # commit time in Postgres
        pa.field("source_table", pa.string()),
        pa.field("snapshot", pa.string()),  # source.snapshot: false, true, first, last, incremental...
        pa.field("topic", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("kafka_timestamp", KAFKA_TIMESTAMP),
        pa.field("ingested_at", UTC_MICROS),
    ])


DEAD_LETTER_SCHEMA = pa.schema([
    pa.field("topic", pa.string()),
    pa.field("partition", pa.int32()),
    pa.field("offset", pa.int64()),
    pa.field("key", pa.binary()),
    pa.field("value", pa.binary()),
    pa.field("error", pa.string()),
    pa.field("dead_lettered_at", UTC_MICROS),
])


_INTEGER_WIDTHS = {pa.int8(): 8, pa.int16(): 16, pa.int32(): 32, pa.int64(): 64}
_UNIT_RANK = {"s": 0, "ms": 1, "us": 2, "ns": 3}


def is_lossless_widening(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether every value of `source` has an exact equal in `target` (so a column may silently widen)."""
    if source == target:
        return True
    if source in _INTEGER_WIDTHS and target in _INTEGER_WIDTHS:
        return _INTEGER_WIDTHS[source] <= _INTEGER_WIDTHS[target]
    if source == pa.float32() and target == pa.float64():
        return True
    if pa.types.is_decimal(source) and pa.types.is_decimal(target):
        integer_digits_fit = target.precision - target.scale >= source.precision - source.scale
        return target.scale >= source.scale and integer_digits_fit
    if pa.types.is_timestamp(source) and pa.types.is_timestamp(target):
        # A zone-less Debezium Timestamp is wall-clock time read as UTC, so it may land in a UTC column too;
        # a zoned one may not lose its zone.
        zone_ok = source.tz is None or source.tz == target.tz
        return zone_ok and _UNIT_RANK[source.unit] <= _UNIT_RANK[target.unit]
    if pa.types.is_time(source) and pa.types.is_time(target):
        return _UNIT_RANK[source.unit] <= _UNIT_RANK[target.unit]
    return False


def wider_type(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The one of `a` and `b` the other widens into losslessly, or None when neither does."""
    if is_lossless_widening(a, b):
        return b
    if is_lossless_widening(b, a):
        return a
    return None
