"""Encode row changes exactly as Debezium 3.7 writes them to Kafka, so bulk loads can skip Postgres.

What belongs here: the byte-level Debezium Postgres contract of the servicing tables (pgoutput, JsonConverter
with `schemas.enable=true` for key and value, `decimal.handling.mode=precise`, `time.precision.mode=adaptive`,
REPLICA IDENTITY DEFAULT, `tombstones.on.delete=true`). Schemas are built from the table registry
(`cardo_pipeline.tables`) once per table and each event's payload JSON is spliced into those fragments,
because benchmarks encode millions of events. Producing them is `cardo_pipeline.simulator.kafka_sink`'s job.

Facts measured on the real connector (`cardo_pipeline_tests/test_debezium_envelopes.py` proves that encoder
and Debezium agree on every message apart from timestamps and WAL positions):
- `before` is null for c and u (REPLICA IDENTITY DEFAULT). For d it holds the key columns, every other
  NOT NULL column at its type's default (0, "", "AA==", day 0, "1970-01-01T00:00:00Z") and nullable ones null.
- An update that does not SET a TOASTed column whose stored value lives out of line carries
  `__debezium_unavailable_value` instead of the value.
- JsonConverter (Jackson) writes compact JSON, raw UTF-8 for BMP characters, surrogate pairs for the others
  (`\\uD83D\\uDE00`) and control characters as `\\u001F` (upper-case hex) apart from \\b \\t \\n \\f \\r.
- Decimals are base64 of the unscaled value as big-endian two's complement in the fewest bytes (Java's
  `BigInteger.toByteArray`); dates are days since 1970-01-01; timestamptz is a ZonedTimestamp string in UTC
  with exactly six fraction digits (only the delete default has none).
"""

from __future__ import annotations

import json
import re
from binascii import b2a_base64
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from cardo_pipeline.tables import SOURCE_TABLES, Column, SourceTable

if TYPE_CHECKING:
    from cardo_pipeline.simulator.changes import Transaction

DEBEZIUM_VERSION = "3.7.0.Final"
SOURCE_SCHEMA = "public"  # the Postgres schema of every servicing table
UNAVAILABLE_VALUE = "__debezium_unavailable_value"
# Postgres moves a value out of line once the tuple passes TOAST_TUPLE_THRESHOLD (about 2 kB on 8 kB pages).
# The exact cut-off depends on the rest of the row; the simulator keeps notes either <= 300 or >= 3,000 bytes.
TOAST_OUT_OF_LINE_BYTES = 2000
DEFAULT_START_LSN = 0x2000000  # a fresh cluster's WAL starts in the first segments; any positive value works
DEFAULT_START_TX_ID = 1000

_COMPACT = (",", ":")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_ONE_MICROSECOND = timedelta(microseconds=1)
_WAL_RECORD_OVERHEAD = 56  # heap record header plus tuple header, roughly; LSNs only need to look plausible
_WAL_COMMIT_RECORD = 64

ValueEncoder = Callable[[Any], str]  # a Python value -> its JSON text in the Debezium payload


class EncodedMessage(NamedTuple):
    topic: str
    key: bytes
    value: bytes | None  # None is the tombstone that follows every delete


# --- scalar encoders: Python value -> JSON text -------------------------------------------------------------

_encode_basestring: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]
_ESCAPED_BACKSLASH_OR_LOWER_HEX = re.compile(r"(\\\\)|\\u([0-9a-f]{4})")
_NON_BMP = re.compile("[\U00010000-\U0010ffff]")
_CACHE_ENTRIES = 1 << 14  # amounts and timestamps repeat a lot (schedules, one commit time per transaction)


def _upper_hex(match: re.Match[str]) -> str:
    return match.group(1) or "\\u" + match.group(2).upper()


def _surrogate_pair(match: re.Match[str]) -> str:
    code = ord(match.group(0)) - 0x10000
    return f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04X}"


def _jackson_string(text: str) -> str:
    out = _encode_basestring(text)
    if not out.isascii() and _NON_BMP.search(out):
        out = _NON_BMP.sub(_surrogate_pair, out)
    if "\\u" in out:  # only control characters, or a literal backslash followed by u
        out = _ESCAPED_BACKSLASH_OR_LOWER_HEX.sub(_upper_hex, out)
    return out


# json's C escaper walks non-ASCII text one character at a time (about 25 us for a 3 kB note, plus the
# non-BMP scan); byte checks on the UTF-8 form and str.replace are fast C loops, so accented notes stay cheap.
_NEEDS_GENERAL_PATH = bytes([c for c in range(0x20) if chr(c) not in "\b\t\n\f\r"] + [*range(0xF0, 0xF5)])
_SHORT_ESCAPES = (
    ("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\b", "\\b"), ("\f", "\\f"),
)
_SHORT_ESCAPED = "".join(char for char, _ in _SHORT_ESCAPES).encode()


def json_string(text: str) -> str:
    """A JSON string literal as Jackson writes it (the module docstring says how that differs from `json`)."""
    if text.isascii():
        return _jackson_string(text)
    raw = text.encode("utf-8")
    if len(raw.translate(None, _NEEDS_GENERAL_PATH)) != len(raw):  # rare control characters, or non-BMP
        return _jackson_string(text)
    if len(raw.translate(None, _SHORT_ESCAPED)) != len(raw):
        for char, escaped in _SHORT_ESCAPES:  # backslash first, so the escapes added later are not doubled
            text = text.replace(char, escaped)
    return '"' + text + '"'


def decimal_unscaled_bytes(value: Decimal | int, scale: int) -> bytes:
    """The unscaled value in the fewest big-endian two's-complement bytes (Java's BigInteger.toByteArray)."""
    if not isinstance(value, Decimal):
        value = Decimal(value)
    scaled = value.scaleb(scale)
    unscaled = int(scaled)
    if unscaled != scaled:  # more fraction digits than the column keeps: Postgres rounds half away from zero
        unscaled = int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    length = ((unscaled if unscaled >= 0 else ~unscaled).bit_length() >> 3) + 1
    return unscaled.to_bytes(length, "big", signed=True)


def decimal_json(value: Decimal | int, scale: int) -> str:
    """org.apache.kafka.connect.data.Decimal in JSON: the unscaled bytes in base64, as a string."""
    return '"' + b2a_base64(decimal_unscaled_bytes(value, scale), newline=False).decode("ascii") + '"'


def date_json(value: date) -> str:
    """io.debezium.time.Date: days since 1970-01-01 (negative before)."""
    return str(value.toordinal() - _EPOCH_ORDINAL)


def zoned_timestamp_json(value: datetime) -> str:
    """io.debezium.time.ZonedTimestamp: ISO-8601 in UTC with exactly six fraction digits and a Z."""
    if value.tzinfo is None:
        raise ValueError(f"timestamptz values must be timezone-aware, got {value!r}")
    return '"' + value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + 'Z"'


def _bool_json(value: bool) -> str:
    return "true" if value else "false"


# --- per-column Connect schema, encoder and delete default, from the Postgres type --------------------------

_NUMERIC = re.compile(r"(?:numeric|decimal)\((\d+),\s*(\d+)\)")
_BPCHAR = re.compile(r"(?:char|character)\((\d+)\)")
_VARCHAR = re.compile(r"(?:varchar|character varying)(?:\(\d+\))?")


class _ColumnCodec(NamedTuple):
    schema: dict[str, Any]  # the Connect field schema without "optional" and "field"
    encode: ValueEncoder
    delete_default: str  # JSON text Debezium puts in a delete's before-image for a NOT NULL non-key column
    inline: str | None = None  # an f-string expression equal to encode(%s), used by the generated encoders


def _column_codec(column: Column) -> _ColumnCodec:
    pg_type = column.pg_type.strip().lower()
    if pg_type in ("bigint", "int8"):
        return _ColumnCodec({"type": "int64"}, str, "0", inline="%s")
    if pg_type in ("integer", "int", "int4"):
        return _ColumnCodec({"type": "int32"}, str, "0", inline="%s")
    if pg_type in ("smallint", "int2"):
        return _ColumnCodec({"type": "int16"}, str, "0", inline="%s")
    if pg_type in ("boolean", "bool"):
        return _ColumnCodec({"type": "boolean"}, _bool_json, "false")
    if pg_type == "text" or _VARCHAR.fullmatch(pg_type):
        return _ColumnCodec({"type": "string"}, json_string, '""')
    if match := _BPCHAR.fullmatch(pg_type):
        width = int(match.group(1))

        def blank_padded_json(value: str) -> str:  # Postgres stores char(n) blank-padded; Debezium sends that
            return json_string(value.ljust(width))

        return _ColumnCodec({"type": "string"}, blank_padded_json, '""')
    if match := _NUMERIC.fullmatch(pg_type):
        precision, scale = int(match.group(1)), int(match.group(2))

        @lru_cache(maxsize=_CACHE_ENTRIES)
        def scaled_decimal_json(value: Decimal) -> str:
            return decimal_json(value, scale)

        schema = {
            "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
            "parameters": {"scale": str(scale), "connect.decimal.precision": str(precision)},
        }
        return _ColumnCodec(schema, scaled_decimal_json, '"AA=="')
    if pg_type == "date":
        schema = {"type": "int32", "name": "io.debezium.time.Date", "version": 1}
        return _ColumnCodec(schema, date_json, "0", inline=f"%s.toordinal() - {_EPOCH_ORDINAL}")
    if pg_type in ("timestamptz", "timestamp with time zone"):
        schema = {"type": "string", "name": "io.debezium.time.ZonedTimestamp", "version": 1}
        cached = lru_cache(maxsize=_CACHE_ENTRIES)(zoned_timestamp_json)
        return _ColumnCodec(schema, cached, '"1970-01-01T00:00:00Z"')
    raise ValueError(f"column {column.name}: no Debezium encoding for Postgres type {column.pg_type!r} yet")


def _field_schema(column: Column, codec: _ColumnCodec, optional: bool) -> dict[str, Any]:
    # Connect's JSON field order: type, optional, then name/version/parameters, then field.
    schema = {"type": codec.schema["type"], "optional": optional}
    schema.update({k: v for k, v in codec.schema.items() if k != "type"})
    schema["field"] = column.name
    return schema


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=_COMPACT, ensure_ascii=False)


RowEncoder = Callable[[Mapping[str, Any]], str]


def _compile_object_encoder(members: list[tuple[Column, _ColumnCodec]]) -> RowEncoder:
    """Generate `row -> JSON object text` with every member's encoding inlined into one f-string.

    Why generated code: this runs for every one of millions of events, and one f-string over local variables
    is about twice as fast as a loop calling an encoder per column. Names, prefixes and encoders are passed in
    the namespace, never pasted into the source, so no column name can break the generated code.
    """
    namespace: dict[str, Any] = {}
    body = ["def encode_object(row):"]
    pieces = []
    for i, (column, codec) in enumerate(members):
        namespace[f"K{i}"] = column.name
        namespace[f"P{i}"] = ("{" if i == 0 else ",") + json_string(column.name) + ":"
        namespace[f"E{i}"] = codec.encode
        body.append(f"    v{i} = row[K{i}]")
        expression = codec.inline % f"v{i}" if codec.inline else f"E{i}(v{i})"
        if column.nullable:
            expression = f"'null' if v{i} is None else {expression}"
        pieces.append(f"{{P{i}}}{{{expression}}}")
    body.append('    return f"' + "".join(pieces) + '}}"')
    exec("\n".join(body), namespace)  # the source is built above from fixed templates only
    return namespace["encode_object"]


# The source and transaction blocks are the same for every table (captured from Debezium 3.7.0.Final).
_SNAPSHOT_MARKERS = "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"
_SOURCE_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "version"},
        {"type": "string", "optional": False, "field": "connector"},
        {"type": "string", "optional": False, "field": "name"},
        {"type": "int64", "optional": False, "field": "ts_ms"},
        {
            "type": "string", "optional": True, "name": "io.debezium.data.Enum", "version": 1,
            "parameters": {"allowed": _SNAPSHOT_MARKERS}, "default": "false", "field": "snapshot",
        },
        {"type": "string", "optional": False, "field": "db"},
        {"type": "string", "optional": True, "field": "sequence"},
        {"type": "int64", "optional": True, "field": "ts_us"},
        {"type": "int64", "optional": True, "field": "ts_ns"},
        {"type": "string", "optional": False, "field": "schema"},
        {"type": "string", "optional": False, "field": "table"},
        {"type": "int64", "optional": True, "field": "txId"},
        {"type": "int64", "optional": True, "field": "lsn"},
        {"type": "int64", "optional": True, "field": "xmin"},
        {"type": "string", "optional": True, "field": "origin"},
        {"type": "int64", "optional": True, "field": "origin_lsn"},
    ],
    "optional": False,
    "name": "io.debezium.connector.postgresql.Source",
    "version": 1,
    "field": "source",
}
_TRANSACTION_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": False, "field": "total_order"},
        {"type": "int64", "optional": False, "field": "data_collection_order"},
    ],
    "optional": True,
    "name": "event.block",
    "version": 1,
    "field": "transaction",
}


class TableEncoder:
    """The precomputed schema fragments and row encoders of one table under one topic prefix."""

    def __init__(self, table: SourceTable, topic_prefix: str, database: str):
        self.table = table
        self.topic = table.topic(topic_prefix)
        codecs = {c.name: _column_codec(c) for c in table.columns}
        # Debezium orders key fields as the table orders its columns, whatever order the key was declared in.
        key_columns = [c for c in table.columns if c.name in table.primary_key]
        if len(key_columns) != len(table.primary_key):
            raise ValueError(f"{table.name}: primary key {table.primary_key} names unknown columns")
        for name in table.toasted:
            if codecs[name].schema["type"] != "string":
                raise ValueError(f"{table.name}.{name}: only text columns can carry the TOAST placeholder")
        self.toasted = table.toasted

        key_schema = {
            "type": "struct",
            "fields": [_field_schema(c, codecs[c.name], optional=False) for c in key_columns],
            "optional": False,
            "name": f"{self.topic}.Key",
        }
        row_fields = [_field_schema(c, codecs[c.name], optional=c.nullable) for c in table.columns]

        def row_struct(field: str) -> dict[str, Any]:
            name = f"{self.topic}.Value"
            return {"type": "struct", "fields": row_fields, "optional": True, "name": name, "field": field}

        envelope_schema = {
            "type": "struct",
            "fields": [
                row_struct("before"),
                row_struct("after"),
                _SOURCE_SCHEMA,
                _TRANSACTION_SCHEMA,
                {"type": "string", "optional": False, "field": "op"},
                {"type": "int64", "optional": True, "field": "ts_ms"},
                {"type": "int64", "optional": True, "field": "ts_us"},
                {"type": "int64", "optional": True, "field": "ts_ns"},
            ],
            "optional": False,
            "name": f"{self.topic}.Envelope",
            "version": 2,
        }
        # Messages are the bytes of these heads followed by the payload: only the payload is built per event.
        self.key_head = ('{"schema":' + _json(key_schema) + ',"payload":').encode()
        self.value_head = ('{"schema":' + _json(envelope_schema) + ',"payload":{"before":').encode()
        # Constant stretches of the source block, around the per-event timestamps and WAL positions.
        self.source_head = (
            f'{{"version":"{DEBEZIUM_VERSION}","connector":"postgresql","name":{json_string(topic_prefix)},"ts_ms":'
        )
        self.source_db = f',"snapshot":"false","db":{json_string(database)},"sequence":"[\\"'
        self.source_table = f',"schema":"{SOURCE_SCHEMA}","table":{json_string(table.name)},"txId":'

        self.row_json: RowEncoder = _compile_object_encoder([(c, codecs[c.name]) for c in table.columns])
        self.key_json: RowEncoder = _compile_object_encoder([(c, codecs[c.name]) for c in key_columns])
        # A delete's before-image (REPLICA IDENTITY DEFAULT): the key values between constant defaults.
        self._delete_fields = [
            (
                ("{" if i == 0 else ",") + json_string(c.name) + ":",
                c.name,
                codecs[c.name].encode if c.name in table.primary_key else None,
                "null" if c.nullable else codecs[c.name].delete_default,
            )
            for i, c in enumerate(table.columns)
        ]

    def delete_before_json(self, row: Mapping[str, Any]) -> str:
        return "".join(
            [prefix + (encode(row[name]) if encode is not None else default)
             for prefix, name, encode, default in self._delete_fields]
        ) + "}"

    def update_after_json(self, row: Mapping[str, Any], changed: frozenset[str]) -> str:
        """An update's after-image: an unchanged out-of-line TOAST value is not in the WAL record."""
        if changed and self.toasted:  # an empty `changed` means every column was SET: nothing left unchanged
            unavailable = [
                name for name in self.toasted if name not in changed and _stored_out_of_line(row[name])
            ]
            if unavailable:
                row = {**row, **dict.fromkeys(unavailable, UNAVAILABLE_VALUE)}
        return self.row_json(row)


def _stored_out_of_line(value: str | None) -> bool:
    if value is None:
        return False
    if len(value) >= TOAST_OUT_OF_LINE_BYTES:  # at least one byte per character: no need to encode
        return True
    return len(value) * 4 >= TOAST_OUT_OF_LINE_BYTES and len(value.encode("utf-8")) >= TOAST_OUT_OF_LINE_BYTES


def _epoch_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"committed_at must be timezone-aware, got {moment!r}")
    return (moment - _EPOCH) // _ONE_MICROSECOND


class EnvelopeEncoder:
    """Turns Transactions into the Kafka messages Debezium would produce for them, in commit order.

    One txId per transaction and strictly increasing synthetic LSNs, continuing across calls on the same
    encoder (pass `start_lsn`/`start_tx_id` to continue another encoder's stream). All timestamps, the
    source's and the envelope's, come from the transaction's `committed_at`, so the output is deterministic.
    """

    def __init__(
        self,
        topic_prefix: str = "servicing",
        *,
        database: str = "servicing",
        tables: Iterable[SourceTable] = SOURCE_TABLES,
        start_lsn: int = DEFAULT_START_LSN,
        start_tx_id: int = DEFAULT_START_TX_ID,
    ):
        self.topic_prefix = topic_prefix
        self.tables = {t.name: TableEncoder(t, topic_prefix, database) for t in tables}
        self.next_lsn = start_lsn
        self.next_tx_id = start_tx_id

    def topic(self, table: str) -> str:
        return self.tables[table].topic

    def encode(self, transactions: Iterable[Transaction]) -> Iterator[EncodedMessage]:
        for transaction in transactions:
            yield from self.encode_transaction(transaction)

    def encode_transaction(self, transaction: Transaction) -> list[EncodedMessage]:
        if not transaction.changes:
            return []  # pgoutput sends nothing for a transaction that changed no published table
        micros = _epoch_micros(transaction.committed_at)
        # source.ts_* is the commit time; the envelope's ts_* (Debezium's processing time) is the same here.
        ts_ms = micros // 1000
        ts_tail = f',"ts_us":{micros},"ts_ns":{micros * 1000}'
        tx_id = self.next_tx_id
        first_lsn = lsn = self.next_lsn
        messages: list[EncodedMessage] = []
        for change in transaction.changes:
            try:
                table = self.tables[change.table]
            except KeyError:
                raise KeyError(f"no source table {change.table!r} in the registry") from None
            op, row = change.op, change.row
            if op == "c":
                before, after = "null", table.row_json(row)
            elif op == "u":
                before, after = "null", table.update_after_json(row, change.changed)
            elif op == "d":
                before, after = table.delete_before_json(row), "null"
            else:
                raise ValueError(f"unsupported op {op!r} for {change.table}: expected c, u or d")
            payload = (
                f'{before},"after":{after},"source":{table.source_head}{ts_ms}{table.source_db}'
                f'{first_lsn}\\",\\"{lsn}\\"]"{ts_tail}{table.source_table}{tx_id},"lsn":{lsn},'
                f'"xmin":null,"origin":null,"origin_lsn":null}},"transaction":null,'
                f'"op":"{op}","ts_ms":{ts_ms}{ts_tail}}}}}'
            )
            key = table.key_head + (table.key_json(row) + "}").encode()
            messages.append(EncodedMessage(table.topic, key, table.value_head + payload.encode()))
            if op == "d":
                messages.append(EncodedMessage(table.topic, key, None))
            # WAL records are 8-byte aligned and grow with the row; the LSN only has to look plausible.
            lsn += _WAL_RECORD_OVERHEAD + (len(before) + len(after) + 7) // 8 * 8
        self.next_lsn = lsn + _WAL_COMMIT_RECORD
        self.next_tx_id = tx_id + 1
        return messages
