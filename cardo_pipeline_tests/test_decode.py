"""Unit tests of the Debezium batch decoder (`cardo_pipeline.cdc.decode`): types, ops, TOAST, dead letters,
schema evolution.

Messages are built here as JsonConverter lays them out (`envelope`), or by the project's encoder
(`cardo_pipeline.cdc.encode`) where the real Debezium shape matters; real captured messages are in
`test_decode_real_debezium.py`, property tests in `test_decode_properties.py`.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple

import pyarrow as pa
import pytest

from cardo_pipeline.cdc.arrow_types import (
    DEAD_LETTER_SCHEMA,
    arrow_type_for_column,
    is_lossless_widening,
    raw_arrow_schema,
)
from cardo_pipeline.cdc.decode import OP_RULES, DecodedBatch, KafkaRecord, decode_batch
from cardo_pipeline.cdc.decode_connect import (
    UNAVAILABLE_VALUE,
    UNAVAILABLE_VALUE_BASE64,
    field_decoder,
    parse_zoned_timestamp,
    unscaled_decimal128,
)
from cardo_pipeline.cdc.encode import EnvelopeEncoder
from cardo_pipeline.tables import SOURCE_TABLES, TABLES_BY_NAME, Column, SourceTable

pytestmark = pytest.mark.usefixtures("decoder_path")  # every test on the native and the Python path

INGESTED_AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
LOANS = TABLES_BY_NAME["loans"]
TOPIC = "servicing.public.things"


# --- building messages -------------------------------------------------------------------------------------


def field(
    name: str, connect_type: str, logical: str | None = None, optional: bool = True, **parameters: str
) -> dict[str, Any]:

    schema: dict[str, Any] = {"type": connect_type, "optional": optional}
    if logical:
        schema.update(name=logical, version=1)
    if parameters:
        schema["parameters"] = parameters
    schema["field"] = name
    return schema


def decimal_field(name: str, precision: int | None, scale: int) -> dict[str, Any]:
    parameters = {"scale": str(scale)}
    if precision is not None:
        parameters["connect.decimal.precision"] = str(precision)
    return field(name, "bytes", "org.apache.kafka.connect.data.Decimal", **parameters)


def b64_unscaled(unscaled: int) -> str:
    length = ((unscaled if unscaled >= 0 else ~unscaled).bit_length() >> 3) + 1
    return base64.b64encode(unscaled.to_bytes(length, "big", signed=True)).decode()


def source(table: str = "things", lsn: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "version": "3.7.0.Final",
        "connector": "postgresql",
        "name": "servicing",
        "ts_ms": 1_700_000_000_123,
        "snapshot": "false",
        "db": "servicing",
        "sequence": None,
        "ts_us": 1_700_000_000_123_456,
        "ts_ns": 1_700_000_000_123_456_000,
        "schema": "public",
        "table": table,
        "txId": 77,
        "lsn": lsn,
        "xmin": None,
        **extra,
    }


def envelope(
    columns: list[dict],
    *,
    op: str = "c",
    after: dict | None = None,
    before: dict | None = None,
    table: str = "things",
    payload: dict | None = None,
    **source_extra: Any,
) -> bytes:
    """A value as Debezium's JsonConverter writes it: compact, schema first, then payload."""

    def image(name: str) -> dict:
        return {
            "type": "struct",
            "fields": columns,
            "optional": True,
            "name": f"{TOPIC}.Value",
            "field": name,
        }

    schema = {
        "type": "struct",
        "fields": [
            image("before"),
            image("after"),
            {
                "type": "struct",
                "fields": [],
                "optional": False,
                "name": "io.debezium.connector.postgresql.Source",
                "field": "source",
            },
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
        ],
        "optional": False,
        "name": f"{TOPIC}.Envelope",
        "version": 2,
    }
    if payload is None:
        payload = {
            "before": before,
            "after": after,
            "source": source(table, **source_extra),
            "op": op,
            "ts_ms": 1_700_000_000_200,
        }
    return json.dumps(
        {"schema": schema, "payload": payload}, separators=(",", ":"), ensure_ascii=False
    ).encode()


def key(value: int, name: str = "id") -> bytes:
    return json.dumps(
        {
            "schema": {
                "type": "struct",
                "fields": [field(name, "int64", optional=False)],
                "optional": False,
                "name": f"{TOPIC}.Key",
            },
            "payload": {name: value},
        },
        separators=(",", ":"),
    ).encode()


def records(*values: bytes | None, keys: list[bytes | None] | None = None) -> list[KafkaRecord]:
    keys = keys or [key(i) for i in range(len(values))]
    return [
        KafkaRecord(TOPIC, 0, 100 + i, k, v, 1_700_000_000_300 + i)
        for i, (k, v) in enumerate(zip(keys, values, strict=True))
    ]


def things(*columns: tuple) -> SourceTable:
    """A one-off source table: id bigint plus the given (name, pg_type[, nullable]) columns."""
    return SourceTable(
        "things", ("id",), (Column("id", "bigint"), *(Column(*c) for c in columns)), "test table"
    )


ID = field("id", "int64", optional=False)


def decode(values: list[bytes | None], table: SourceTable, **kwargs: Any) -> DecodedBatch:
    batch = decode_batch(
        records(*values, keys=kwargs.pop("keys", None)), table, ingested_at=INGESTED_AT, **kwargs
    )
    assert batch.rows.num_rows + batch.dead_letters.num_rows == len(values)
    assert batch.rows.schema == raw_arrow_schema(table, batch.new_columns)
    assert batch.dead_letters.schema == DEAD_LETTER_SCHEMA
    return batch


def only_row(batch: DecodedBatch) -> dict[str, Any]:
    assert batch.dead_letters.num_rows == 0, batch.dead_letters["error"].to_pylist()
    assert batch.rows.num_rows == 1
    return batch.rows.to_pylist()[0]


def errors(batch: DecodedBatch) -> dict[int, str]:
    return dict(
        zip(batch.dead_letters["offset"].to_pylist(), batch.dead_letters["error"].to_pylist(), strict=True)
    )


# --- the raw layout -----------------------------------------------------------------------------------------


def test_raw_schema_is_driven_by_the_registry():
    schema = raw_arrow_schema(LOANS)
    assert schema.names == [
        "op",
        "key",
        "before",
        "after",
        "unchanged_toast",
        "source_lsn",
        "source_tx_id",
        "source_ts",
        "source_table",
        "snapshot",
        "topic",
        "partition",
        "offset",
        "kafka_timestamp",
        "ingested_at",
    ]
    image = schema.field("after").type
    assert schema.field("before").type == image
    assert [f.name for f in image] == LOANS.column_names
    assert {f.name: f.type for f in image} == {
        "loan_id": pa.int64(),
        "borrower_id": pa.int64(),
        "product": pa.string(),
        "currency": pa.string(),
        "principal": pa.decimal128(14, 2),
        "interest_rate": pa.decimal128(7, 5),
        "term_months": pa.int32(),
        "origination_date": pa.date32(),
        "maturity_date": pa.date32(),
        "outstanding_principal": pa.decimal128(14, 2),
        "status": pa.string(),
        "days_past_due": pa.int32(),
        "servicer_notes": pa.string(),
        "updated_at": pa.timestamp("us", tz="UTC"),
    }
    assert schema.field("unchanged_toast").type == pa.list_(pa.string())
    assert schema.field("partition").type == pa.int32() and schema.field("offset").type == pa.int64()
    assert schema.field("kafka_timestamp").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("source_ts").type == schema.field("ingested_at").type == pa.timestamp("us", tz="UTC")
    evolved = raw_arrow_schema(LOANS, {"risk_grade": pa.string()})
    assert evolved.field("after").type[-1] == pa.field("risk_grade", pa.string())


@pytest.mark.parametrize("table", SOURCE_TABLES, ids=lambda t: t.name)
def test_every_registry_column_has_an_arrow_type(table):
    assert len(raw_arrow_schema(table).field("after").type) == len(table.columns)


def test_dead_letter_layout():
    assert [(f.name, f.type) for f in DEAD_LETTER_SCHEMA] == [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("error", pa.string()),
        ("dead_lettered_at", pa.timestamp("us", tz="UTC")),
    ]


# --- one test per Connect type ------------------------------------------------------------------------------

TYPE_CASES = [
    # (pg type of the column, the message's field schema, JSON value, decoded value)
    ("bigint", field("v", "int64"), -9223372036854775808, -9223372036854775808),
    ("integer", field("v", "int32"), 2147483647, 2147483647),
    ("smallint", field("v", "int16"), -32768, -32768),
    ("boolean", field("v", "boolean"), True, True),
    ("real", field("v", "float32"), 1.5, 1.5),
    ("double precision", field("v", "float64"), -2.25e300, -2.25e300),
    ("text", field("v", "string"), 'Zoë "q" \\ \n 😀', 'Zoë "q" \\ \n 😀'),
    ("char(3)", field("v", "string"), "EU ", "EU "),
    (
        "uuid",
        field("v", "string", "io.debezium.data.Uuid"),
        "9a2d0a30-0c64-4c1e-9f3c-1d0c5e6f7a8b",
        "9a2d0a30-0c64-4c1e-9f3c-1d0c5e6f7a8b",
    ),
    ("jsonb", field("v", "string", "io.debezium.data.Json"), '{"a": 1}', '{"a": 1}'),
    ("bytea", field("v", "bytes"), base64.b64encode(b"\x00\xffab").decode(), b"\x00\xffab"),
    ("numeric(14,2)", decimal_field("v", 14, 2), b64_unscaled(99999999999999), Decimal("999999999999.99")),
    ("numeric(14,2)", decimal_field("v", 14, 2), b64_unscaled(-99999999999999), Decimal("-999999999999.99")),
    ("numeric(14,2)", decimal_field("v", 14, 2), "AA==", Decimal("0.00")),
    ("numeric(7,5)", decimal_field("v", 7, 5), "DDU=", Decimal("0.03125")),
    (
        "numeric(38,10)",
        decimal_field("v", 38, 10),
        b64_unscaled(-(10**38 - 1)),
        Decimal("-9999999999999999999999999999.9999999999"),
    ),
    (
        "numeric(38,4)",
        field("v", "struct", "io.debezium.data.VariableScaleDecimal"),
        {"scale": 4, "value": b64_unscaled(10**37 + 1)},
        Decimal("1000000000000000000000000000000000.0001"),
    ),
    (
        "numeric(10,2)",
        field("v", "struct", "io.debezium.data.VariableScaleDecimal"),
        {"scale": 3, "value": b64_unscaled(-12340)},
        Decimal("-12.34"),
    ),
    ("date", field("v", "int32", "io.debezium.time.Date"), 19783, date(2024, 3, 1)),
    ("date", field("v", "int32", "io.debezium.time.Date"), -719162, date(1, 1, 1)),
    ("date", field("v", "int32", "io.debezium.time.Date"), 2932896, date(9999, 12, 31)),
    (
        "timestamptz",
        field("v", "string", "io.debezium.time.ZonedTimestamp"),
        "2024-03-01T09:30:00.123456Z",
        datetime(2024, 3, 1, 9, 30, 0, 123456, tzinfo=UTC),
    ),
    (
        "timestamptz",
        field("v", "string", "io.debezium.time.ZonedTimestamp"),
        "1970-01-01T00:00:00Z",
        datetime(1970, 1, 1, tzinfo=UTC),
    ),
    (
        "timestamptz",
        field("v", "string", "io.debezium.time.ZonedTimestamp"),
        "2024-03-01T09:30:00.5+02:00",
        datetime(2024, 3, 1, 7, 30, 0, 500000, tzinfo=UTC),
    ),
    (
        "timestamptz",
        field("v", "string", "io.debezium.time.ZonedTimestamp"),
        "0001-01-01T00:00:00.000001Z",
        datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ),
    (
        "timestamptz",
        field("v", "string", "io.debezium.time.ZonedTimestamp"),
        "2024-03-01T09:30:00.123456000Z",
        datetime(2024, 3, 1, 9, 30, 0, 123456, tzinfo=UTC),
    ),  # nine digits, whole microseconds
    (
        "timestamptz",
        field("v", "string", "io.debezium.time.ZonedTimestamp"),
        "2024-02-29T23:59:59.9999990-05:30",
        datetime(2024, 3, 1, 5, 29, 59, 999999, tzinfo=UTC),
    ),
    (
        "timestamptz",
        field("v", "int64", "io.debezium.time.MicroTimestamp"),
        -1,
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ),
    (
        "timestamptz",
        field("v", "int64", "io.debezium.time.Timestamp"),
        1709285400123,
        datetime(2024, 3, 1, 9, 30, 0, 123000, tzinfo=UTC),
    ),
    (
        "timestamptz",
        field("v", "int64", "io.debezium.time.NanoTimestamp"),
        1709285400123456000,
        datetime(2024, 3, 1, 9, 30, 0, 123456, tzinfo=UTC),
    ),
    (
        "timestamp",
        field("v", "int64", "io.debezium.time.MicroTimestamp"),
        1709285400123456,
        datetime(2024, 3, 1, 9, 30, 0, 123456),
    ),
    ("time", field("v", "int64", "io.debezium.time.MicroTime"), 34200123456, time(9, 30, 0, 123456)),
    ("time", field("v", "int32", "io.debezium.time.Time"), 34200123, time(9, 30, 0, 123000)),
    # Widening: the message's type fits the column's without loss.
    ("bigint", field("v", "int32"), -5, -5),
    ("integer", field("v", "int16"), 7, 7),
    ("double precision", field("v", "float32"), 0.5, 0.5),
    ("numeric(14,2)", decimal_field("v", 12, 1), b64_unscaled(12345), Decimal("1234.50")),
    ("numeric(14,2)", decimal_field("v", None, 1), b64_unscaled(12345), Decimal("1234.50")),
]


@pytest.mark.parametrize(
    ("pg_type", "schema", "value", "expected"),
    TYPE_CASES,
    ids=[f"{c[0]}<-{c[1].get('name', c[1]['type'])}" for c in TYPE_CASES],
)
def test_each_type_decodes_by_the_schema_in_the_message(pg_type, schema, value, expected):
    table = things(("v", pg_type, True))
    row = only_row(decode([envelope([ID, schema], after={"id": 1, "v": value})], table))
    assert row["after"] == {"id": 1, "v": expected}
    assert row["before"] is None
    assert decode([envelope([ID, schema], after={"id": 1, "v": None})], table).rows.to_pylist()[0][
        "after"
    ] == {"id": 1, "v": None}


def test_decoded_arrow_types_are_the_registry_types_whatever_the_message_sent():
    table = things(("a", "bigint"), ("b", "numeric(14,2)"), ("c", "timestamptz"))
    value = envelope(
        [
            ID,
            field("a", "int16"),
            decimal_field("b", 10, 0),
            field("c", "int64", "io.debezium.time.Timestamp"),
        ],
        after={"id": 1, "a": 2, "b": "BA==", "c": 0},
    )
    batch = decode([value], table)
    assert batch.rows.schema.field("after").type == pa.struct(
        [
            ("id", pa.int64()),
            ("a", pa.int64()),
            ("b", pa.decimal128(14, 2)),
            ("c", pa.timestamp("us", tz="UTC")),
        ]
    )
    assert only_row(batch)["after"] == {
        "id": 1,
        "a": 2,
        "b": Decimal("4.00"),
        "c": datetime(1970, 1, 1, tzinfo=UTC),
    }


def test_a_column_missing_from_the_message_is_null():
    table = things(("kept", "text"), ("dropped", "integer"))  # ALTER TABLE ... DROP COLUMN dropped
    row = only_row(decode([envelope([ID, field("kept", "string")], after={"id": 1, "kept": "x"})], table))
    assert row["after"] == {"id": 1, "kept": "x", "dropped": None}


# --- ops ----------------------------------------------------------------------------------------------------

THING = things(("name", "text", True))
THING_FIELDS = [ID, field("name", "string")]


@pytest.mark.parametrize("op", ["c", "r", "u"])
def test_creates_reads_and_updates_carry_after(op):
    row = only_row(decode([envelope(THING_FIELDS, op=op, after={"id": 1, "name": "a"})], THING))
    assert (row["op"], row["before"], row["after"]) == (op, None, {"id": 1, "name": "a"})


def test_update_with_a_before_image_keeps_it():  # REPLICA IDENTITY FULL
    row = only_row(
        decode(
            [envelope(THING_FIELDS, op="u", before={"id": 1, "name": "a"}, after={"id": 1, "name": "b"})],
            THING,
        )
    )
    assert (row["before"], row["after"]) == ({"id": 1, "name": "a"}, {"id": 1, "name": "b"})


def test_delete_carries_before():
    row = only_row(decode([envelope(THING_FIELDS, op="d", before={"id": 1, "name": ""})], THING))
    assert (row["op"], row["before"], row["after"]) == ("d", {"id": 1, "name": ""}, None)


def test_truncate_lands_with_null_images():
    value = envelope(THING_FIELDS, op="t", before={"id": 1, "name": "ignored"})
    batch = decode_batch([KafkaRecord(TOPIC, 0, 5, None, value, 1)], THING, ingested_at=INGESTED_AT)
    row = batch.rows.to_pylist()[0]
    assert (row["op"], row["key"], row["before"], row["after"], row["source_table"]) == (
        "t",
        None,
        None,
        None,
        "things",
    )


def test_source_block_columns():
    row = only_row(
        decode([envelope(THING_FIELDS, after={"id": 1, "name": "a"}, lsn=123456789, snapshot="first")], THING)
    )
    assert row["source_lsn"] == 123456789 and row["source_tx_id"] == 77
    assert row["source_ts"] == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert (row["source_table"], row["snapshot"]) == ("things", "first")
    assert (row["topic"], row["partition"], row["offset"]) == (TOPIC, 0, 100)
    assert row["kafka_timestamp"] == datetime(2023, 11, 14, 22, 13, 20, 300000, tzinfo=UTC)
    assert row["ingested_at"] == INGESTED_AT and row["key"] == '{"id":0}'


def test_source_ts_falls_back_to_ts_ms():
    row = only_row(decode([envelope(THING_FIELDS, after={"id": 1, "name": "a"}, ts_us=None)], THING))
    assert row["source_ts"] == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


def test_op_rules_cover_every_debezium_op():
    assert set(OP_RULES) == {"c", "r", "u", "d", "t"}


# --- tombstones and keys ------------------------------------------------------------------------------------


def test_tombstones_land_as_rows_in_input_order():
    values = [
        None,
        envelope(THING_FIELDS, op="d", before={"id": 1, "name": ""}),
        None,
        None,
        envelope(THING_FIELDS, after={"id": 2, "name": "b"}),
        None,
    ]
    batch = decode(values, THING)
    assert batch.rows["op"].to_pylist() == ["tombstone", "d", "tombstone", "tombstone", "c", "tombstone"]
    assert batch.rows["offset"].to_pylist() == [100, 101, 102, 103, 104, 105]
    assert batch.rows["key"].to_pylist() == [f'{{"id":{i}}}' for i in range(6)]
    tombstone = batch.rows.to_pylist()[2]
    assert all(tombstone[c] is None for c in ("before", "after", "source_lsn", "source_ts", "snapshot"))
    assert tombstone["unchanged_toast"] == []


def test_a_batch_of_tombstones_only():
    batch = decode([None, None], THING, keys=[key(1), None])
    assert batch.rows["op"].to_pylist() == ["tombstone", "tombstone"]
    assert batch.rows["key"].to_pylist() == ['{"id":1}', None]


class _Change(NamedTuple):  # the RowChange / Transaction protocol the encoder reads
    table: str
    op: str
    row: dict
    changed: frozenset = frozenset()


class _Transaction(NamedTuple):
    changes: tuple
    committed_at: datetime


BORROWER = {
    "borrower_id": 920001,
    "borrower_type": "sme",
    "full_name": "Rossi Costruzioni Srl",
    "birth_date": None,
    "annual_income": Decimal("1850000.00"),
    "employment_status": "self_employed",
    "postcode": "20121",
    "country_code": "IT",
    "created_at": datetime(2024, 1, 2, 8, tzinfo=UTC),
    "updated_at": datetime(2024, 1, 2, 8, tzinfo=UTC),
}


def encoded(*changes: _Change, at: datetime = datetime(2024, 5, 1, tzinfo=UTC)) -> list[KafkaRecord]:
    messages = EnvelopeEncoder().encode_transaction(_Transaction(changes, at))
    return [KafkaRecord(m.topic, 0, i, m.key, m.value, 1) for i, m in enumerate(messages)]


def test_primary_key_change_is_delete_tombstone_create():
    moved = {**BORROWER, "borrower_id": 920002}
    batch = decode_batch(
        encoded(_Change("borrowers", "d", BORROWER), _Change("borrowers", "c", moved)),
        TABLES_BY_NAME["borrowers"],
        ingested_at=INGESTED_AT,
    )
    assert batch.dead_letters.num_rows == 0
    rows = batch.rows.to_pylist()
    assert [(r["op"], r["key"]) for r in rows] == [
        ("d", '{"borrower_id":920001}'),
        ("tombstone", '{"borrower_id":920001}'),
        ("c", '{"borrower_id":920002}'),
    ]
    assert rows[0]["before"]["borrower_id"] == 920001 and rows[0]["before"]["full_name"] == ""
    assert rows[2]["after"] == moved
    assert (
        rows[0]["source_lsn"] < rows[2]["source_lsn"] and rows[0]["source_tx_id"] == rows[2]["source_tx_id"]
    )


def test_keys_in_other_layouts_are_kept_as_compact_json():
    values = [envelope(THING_FIELDS, after={"id": i, "name": "a"}) for i in range(4)]
    keys = [b'{"id": 5}', b'{ "payload" : {"id": 6}, "schema": {"type":"struct"} }', key(7), None]
    batch = decode(values, THING, keys=keys)
    assert batch.rows["key"].to_pylist() == ['{"id":5}', '{"id":6}', '{"id":7}', None]


def test_a_malformed_key_is_dead_lettered():
    values = [envelope(THING_FIELDS, after={"id": i, "name": "a"}) for i in range(5)]
    keys = [
        key(1),
        b'{"schema":{"type":"struct"},"payload":{"id":1,}}',
        b"\xff\xfe",
        key(2).replace(b'{"id":2}', b'{"id":"\xff"}'),
        key(3),
    ]
    batch = decode(values, THING, keys=keys)
    assert batch.rows["offset"].to_pylist() == [100, 104]
    assert len(errors(batch)) == 3
    assert all(e.startswith("malformed key JSON") for e in errors(batch).values())


# --- TOAST --------------------------------------------------------------------------------------------------

TOASTY = things(("notes", "text", True), ("memo", "text", True), ("amount", "numeric(14,2)", True))
TOASTY_FIELDS = [ID, field("notes", "string"), field("memo", "string"), decimal_field("amount", 14, 2)]


def test_unchanged_toast_placeholder_is_a_marker_not_a_value():
    values = [
        envelope(
            TOASTY_FIELDS, op="u", after={"id": 1, "notes": UNAVAILABLE_VALUE, "memo": "m", "amount": "AQ=="}
        ),
        envelope(
            TOASTY_FIELDS,
            op="u",
            after={
                "id": 2,
                "notes": UNAVAILABLE_VALUE,
                "memo": UNAVAILABLE_VALUE,
                "amount": UNAVAILABLE_VALUE_BASE64,
            },
        ),
        envelope(TOASTY_FIELDS, op="c", after={"id": 3, "notes": "n", "memo": None, "amount": None}),
    ]
    rows = decode(values, TOASTY).rows.to_pylist()
    assert [r["unchanged_toast"] for r in rows] == [["notes"], ["notes", "memo", "amount"], []]
    assert rows[0]["after"] == {"id": 1, "notes": None, "memo": "m", "amount": Decimal("0.01")}
    assert rows[1]["after"] == {"id": 2, "notes": None, "memo": None, "amount": None}


def test_toast_placeholders_of_deletes_are_listed_from_before():
    values = [
        envelope(
            TOASTY_FIELDS, op="d", before={"id": 1, "notes": UNAVAILABLE_VALUE, "memo": "", "amount": "AA=="}
        ),
        # REPLICA IDENTITY FULL: an update's before can hold placeholders too; they are nulled, not listed.
        envelope(
            TOASTY_FIELDS,
            op="u",
            before={"id": 2, "notes": UNAVAILABLE_VALUE, "memo": "", "amount": "AA=="},
            after={"id": 2, "notes": "new", "memo": "", "amount": "AA=="},
        ),
    ]
    rows = decode(values, TOASTY).rows.to_pylist()
    assert [r["unchanged_toast"] for r in rows] == [["notes"], []]
    assert rows[0]["before"]["notes"] is None and rows[1]["before"]["notes"] is None


def test_unchanged_toast_lists_columns_in_table_order():
    values = [
        envelope(
            TOASTY_FIELDS, op="d", before={"id": 1, "notes": "", "memo": UNAVAILABLE_VALUE, "amount": "AA=="}
        ),
        envelope(
            TOASTY_FIELDS,
            op="u",
            after={"id": 2, "notes": UNAVAILABLE_VALUE, "memo": UNAVAILABLE_VALUE, "amount": "AA=="},
        ),
    ]
    assert [r["unchanged_toast"] for r in decode(values, TOASTY).rows.to_pylist()] == [
        ["memo"],
        ["notes", "memo"],
    ]


def test_encoder_toast_update_decodes_with_the_placeholder_listed():
    loan = {
        "loan_id": 7,
        "borrower_id": 1,
        "product": "mortgage",
        "currency": "EUR",
        "principal": Decimal("100000.00"),
        "interest_rate": Decimal("0.03125"),
        "term_months": 240,
        "origination_date": date(2024, 1, 1),
        "maturity_date": date(2044, 1, 1),
        "outstanding_principal": Decimal("99000.00"),
        "status": "active",
        "days_past_due": 0,
        "servicer_notes": "x" * 3000,
        "updated_at": datetime(2024, 2, 1, tzinfo=UTC),
    }
    batch = decode_batch(
        encoded(_Change("loans", "c", loan), _Change("loans", "u", loan, frozenset({"days_past_due"}))),
        LOANS,
        ingested_at=INGESTED_AT,
    )
    created, updated = batch.rows.to_pylist()
    assert created["after"] == loan and created["unchanged_toast"] == []
    assert updated["after"] == {**loan, "servicer_notes": None} and updated["unchanged_toast"] == [
        "servicer_notes"
    ]


# --- dead letters: one per reason, and the rest of the batch still lands ------------------------------------

GOOD = envelope(THING_FIELDS, after={"id": 1, "name": "good"})
BAD_VALUES = {
    "malformed JSON": [
        b"",
        b"not json",
        b"\x00\x01\x02",
        GOOD[:-1],
        GOOD[:200],
        GOOD + b"x",
        GOOD.replace(b'"good"', b'"go\xffod"'),
        b'{"schema":{},"payload":{"a":1,}}',
    ],
    "not a Debezium envelope": [
        b"[]",
        b"null",
        b'"text"',
        b'{"payload":{"op":"c"}}',
        b'{"schema":{}}',
        b'{"schema":{"type":"struct","fields":[]},"payload":null}',
        b'{"schema":{"type":"string"},"payload":{"op":"c"}}',
        envelope([ID], payload={"before": None, "after": {"id": 1}, "op": "c"}).replace(
            b'"field":"op"', b'"field":"operation"'
        ),
    ],
    "unknown op": [
        envelope(THING_FIELDS, op="x", after={"id": 1, "name": "a"}),
        envelope(THING_FIELDS, payload={"before": None, "after": {"id": 1, "name": "a"}, "source": source()}),
    ],
    "missing after for op c": [envelope(THING_FIELDS, op="c")],
    "missing after for op u": [envelope(THING_FIELDS, op="u", before={"id": 1, "name": "a"})],
    "missing after for op r": [envelope(THING_FIELDS, op="r")],
    "missing before for op d": [envelope(THING_FIELDS, op="d")],
    "does not match the topic's table": [envelope(THING_FIELDS, after={"id": 1, "name": "a"}, table="loans")],
    "undecodable value": [
        envelope(THING_FIELDS, after={"id": "one", "name": "a"}),
        envelope(THING_FIELDS, after={"id": 1.5, "name": "a"}),
        envelope(THING_FIELDS, after={"id": 2**63, "name": "a"}),
        envelope(THING_FIELDS, after={"id": 1, "name": ["a"]}),
        envelope(THING_FIELDS, after={"id": 1, "name": "\\ud800"}).replace(b"\\\\ud800", b"\\ud800"),
        envelope(THING_FIELDS, after={"id": 1, "name": "a"}, lsn="high"),
    ],
}


@pytest.mark.parametrize(
    ("reason", "value"),
    [(r, v) for r, vs in BAD_VALUES.items() for v in vs],
    ids=[f"{r}-{i}" for r, vs in BAD_VALUES.items() for i in range(len(vs))],
)
def test_each_dead_letter_reason_costs_only_its_record(reason, value):
    batch = decode([GOOD, value, GOOD], THING)
    assert batch.rows["offset"].to_pylist() == [100, 102]
    dead = batch.dead_letters.to_pylist()
    assert len(dead) == 1
    assert reason in dead[0]["error"], dead[0]["error"]
    assert (dead[0]["topic"], dead[0]["partition"], dead[0]["offset"]) == (TOPIC, 0, 101)
    assert (dead[0]["key"], dead[0]["value"]) == (key(1), value)
    assert dead[0]["dead_lettered_at"] == INGESTED_AT


VALUE_CASES = [
    # (pg type, field schema, bad JSON value, words the reason must contain)
    ("numeric(14,2)", decimal_field("v", 14, 2), "!!!!", ["after.v", "not base64"]),
    ("numeric(14,2)", decimal_field("v", 14, 2), "AAA", ["after.v", "not base64"]),
    ("numeric(14,2)", decimal_field("v", 14, 2), b64_unscaled(10**14), ["after.v", "does not fit"]),
    ("numeric(14,2)", decimal_field("v", 14, 2), b64_unscaled(2**130), ["after.v", "128 bits"]),
    ("numeric(14,2)", decimal_field("v", None, 2), b64_unscaled(10**14), ["after.v", "does not fit"]),
    (
        "numeric(7,5)",
        field("v", "struct", "io.debezium.data.VariableScaleDecimal"),
        {"scale": 6, "value": b64_unscaled(1234567)},
        ["after.v", "does not fit"],
    ),
    (
        "timestamptz",
        field("v", "string", "io.debezium.time.ZonedTimestamp"),
        "2024-02-30T00:00:00Z",
        ["after.v", "no such date"],
    ),
    (
        "timestamptz",
        field("v", "string", "io.debezium.time.ZonedTimestamp"),
        "yesterday",
        ["after.v", "ISO-8601"],
    ),
    (
        "timestamptz",
        field("v", "string", "io.debezium.time.ZonedTimestamp"),
        "2024-03-01T09:30:00",
        ["after.v", "zone offset"],
    ),
    (
        "timestamptz",
        field("v", "string", "io.debezium.time.ZonedTimestamp"),
        "2024-03-01T09:30:00.123456789Z",
        ["after.v", "sub-microsecond"],
    ),
    ("timestamptz", field("v", "int64", "io.debezium.time.NanoTimestamp"), 1709285400123456789, ["after.v"]),
    ("timestamptz", field("v", "int64", "io.debezium.time.Timestamp"), 2**62, ["after.v"]),
    ("bytea", field("v", "bytes"), "a*b", ["after.v", "not base64"]),
    ("smallint", field("v", "int16"), 40000, ["undecodable value"]),
]


@pytest.mark.parametrize(
    ("pg_type", "schema", "value", "words"), VALUE_CASES, ids=[f"{c[0]}-{c[2]!s:.20}" for c in VALUE_CASES]
)
def test_undecodable_values_are_pinpointed(pg_type, schema, value, words):
    table = things(("v", pg_type, True))
    good = [envelope([ID, schema], after={"id": i, "v": None}) for i in range(5)]
    bad = envelope([ID, schema], after={"id": 99, "v": value})
    batch = decode([*good[:2], bad, *good[2:]], table)
    assert batch.rows["offset"].to_pylist() == [100, 101, 103, 104, 105]
    (reason,) = errors(batch).values()
    assert reason.startswith("undecodable value") and all(w in reason for w in words), reason


INCOMPATIBLE = [
    ("integer", field("v", "int64")),
    ("bigint", field("v", "string")),
    ("numeric(14,2)", decimal_field("v", 16, 2)),
    ("numeric(14,2)", decimal_field("v", 14, 3)),
    ("date", field("v", "string", "io.debezium.time.ZonedTimestamp")),
    ("timestamptz", field("v", "int32", "io.debezium.time.Date")),
    ("timestamp", field("v", "string", "io.debezium.time.ZonedTimestamp")),
    ("text", field("v", "int64")),
    ("text", field("v", "array")),
    ("real", field("v", "float64")),
]


@pytest.mark.parametrize(
    ("pg_type", "schema"), INCOMPATIBLE, ids=[f"{c[0]}<-{c[1]['type']}" for c in INCOMPATIBLE]
)
def test_incompatible_type_changes_are_dead_lettered_with_both_types(pg_type, schema):
    table = things(("v", pg_type, True))
    new = envelope([ID, schema], after={"id": 2, "v": None})
    batch = decode(
        [
            envelope(
                [ID, field("v", "int64") if pg_type == "text" else field("x", "string")], after={"id": 1}
            ),
            new,
            None,
        ],
        table,
    )
    assert (
        batch.rows["op"].to_pylist()[-1] == "tombstone"
    )  # the tombstone is not dead-lettered with its group
    reason = errors(batch)[101]
    assert reason.startswith("incompatible type change: things.v is "), reason
    assert str(arrow_type_for_column(table.column("v"))) in reason or "unsupported" in reason


# --- schema evolution ---------------------------------------------------------------------------------------


def test_an_added_column_is_appended_as_nullable_and_reported():
    old = envelope(THING_FIELDS, after={"id": 1, "name": "a"})
    new = envelope(
        [*THING_FIELDS, field("risk", "int32"), decimal_field("limit", 10, 2)],
        after={"id": 2, "name": "b", "risk": 3, "limit": "AQ=="},
    )
    batch = decode([old, new, old], THING)
    assert batch.new_columns == {"risk": pa.int32(), "limit": pa.decimal128(10, 2)}
    assert [r["after"] for r in batch.rows.to_pylist()] == [
        {"id": 1, "name": "a", "risk": None, "limit": None},
        {"id": 2, "name": "b", "risk": 3, "limit": Decimal("0.01")},
        {"id": 1, "name": "a", "risk": None, "limit": None},
    ]


def test_a_new_column_takes_the_widest_type_of_the_batch():
    narrow = envelope([*THING_FIELDS, field("risk", "int16")], after={"id": 1, "name": "a", "risk": 1})
    wide = envelope([*THING_FIELDS, field("risk", "int64")], after={"id": 2, "name": "b", "risk": 2**40})
    other = envelope([*THING_FIELDS, field("risk", "string")], after={"id": 3, "name": "c", "risk": "x"})
    batch = decode([narrow, wide, other], THING)
    assert batch.new_columns == {"risk": pa.int64()}
    assert [r["after"]["risk"] for r in batch.rows.to_pylist()] == [1, 2**40]
    assert "incompatible type change: things.risk is string" in errors(batch)[102]


def test_columns_of_dead_lettered_schemas_are_not_reported():
    incompatible = envelope(
        [ID, field("name", "int64"), field("extra", "string")], after={"id": 1, "name": 5, "extra": "x"}
    )
    batch = decode([incompatible, GOOD], THING)
    assert batch.new_columns == {}
    assert "things.name is int64" in errors(batch)[100]


def test_known_evolved_columns_fix_the_type():
    wide = envelope([*THING_FIELDS, field("risk", "int64")], after={"id": 2, "name": "b", "risk": 5})
    narrow = envelope([*THING_FIELDS, field("risk", "int16")], after={"id": 1, "name": "a", "risk": 1})
    batch = decode([wide, narrow, GOOD], THING, evolved_columns={"risk": pa.int32()})
    assert batch.new_columns == {"risk": pa.int32()}
    assert [r["after"]["risk"] for r in batch.rows.to_pylist()] == [1, None]
    assert "things.risk is int64" in errors(batch)[100]


# --- layouts other than JsonConverter's, and batches with several schemas -----------------------------------


def test_unusual_but_valid_layouts_still_decode():
    document = json.loads(GOOD)
    payload_first = json.dumps({"payload": document["payload"], "schema": document["schema"]}).encode()
    pretty = json.dumps(document, indent=2).encode()
    tricky_schema = json.loads(GOOD)
    tricky_schema["schema"]["parameters"] = {"a": "b", "payload": "a parameter named like the payload key"}
    tricky = json.dumps(tricky_schema, separators=(",", ":")).encode()
    assert b',"payload":' in tricky[: tricky.index(b',"payload":{"before"')]
    batch = decode([payload_first, pretty, tricky, GOOD], THING)
    assert [r["after"] for r in batch.rows.to_pylist()] == [{"id": 1, "name": "good"}] * 4


def test_interleaved_schemas_keep_input_order():
    a = [envelope(THING_FIELDS, after={"id": i, "name": "a"}) for i in range(3)]
    b = [
        envelope([*THING_FIELDS, field("x", "boolean")], after={"id": 10 + i, "name": "b", "x": True})
        for i in range(3)
    ]
    batch = decode([a[0], b[0], None, a[1], b[1], b[2], a[2]], THING)
    assert [r["after"] and r["after"]["id"] for r in batch.rows.to_pylist()] == [0, 10, None, 1, 11, 12, 2]


def test_empty_batch():
    batch = decode([], THING)
    assert batch.rows.num_rows == 0 and batch.dead_letters.num_rows == 0 and batch.new_columns == {}


def test_ingested_at_must_be_timezone_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        decode_batch([], THING, ingested_at=datetime(2026, 1, 1))


def test_missing_kafka_timestamp_is_null():
    batch = decode_batch([KafkaRecord(TOPIC, 3, 9, None, GOOD, -1)], THING, ingested_at=INGESTED_AT)
    row = batch.rows.to_pylist()[0]
    assert (row["kafka_timestamp"], row["partition"], row["offset"]) == (None, 3, 9)


def test_large_batches_are_parsed_in_pieces_and_bad_records_found_in_each(monkeypatch):
    import cardo_pipeline.cdc.decode as decode_module

    monkeypatch.setenv("CARDO_NATIVE_DECODER", "0")  # chunking by payload bytes is the Python path's
    monkeypatch.setattr(decode_module, "CHUNK_BYTES", 1 << 20)
    notes = "n" * 3000
    values = [envelope(THING_FIELDS, after={"id": i, "name": notes}) for i in range(2000)]  # ~6 MB of payload
    for i in (5, 999, 1998):
        values[i] = values[i].replace(b'"id":%d,' % i, b'"id":"%d",' % i)
    values[700:700] = [None] * 3  # tombstones in the middle of a chunk
    batch = decode(values, THING)
    assert sorted(errors(batch)) == [105, 1102, 2101]
    assert batch.rows.num_rows == 2000
    assert batch.rows["after"].num_chunks > 4
    ids = batch.rows["after"].combine_chunks().field("id").to_pylist()
    good = [i for i in range(2000) if i not in (5, 999, 1998)]
    assert ids == good[:699] + [None] * 3 + good[699:]


# --- the Connect-type building blocks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00Z", 0),
        ("1970-01-01 01:00:00+01", 0),
        ("1970-01-01T00:00:00.000001Z", 1),
        ("1969-12-31T23:59:59.999999Z", -1),
        ("2000-02-29T12:00:00.5-0130", 951831000500000),  # 13:30:00.5 UTC
        ("0000-01-01T00:00:00Z", -62167219200000000),
    ],
)
def test_zoned_timestamps(text, micros):
    assert parse_zoned_timestamp(text) == micros
    assert pa.array([text]).cast(pa.timestamp("us", tz="UTC"))[0].value == micros  # Arrow agrees


@pytest.mark.parametrize(
    "text",
    [
        "2023-02-29T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:00:00+24:00",
        "2024-01-01T00:00:00",
        "2024-01-01Z",
        "2024-1-01T00:00:00Z",
    ],
)
def test_bad_zoned_timestamps(text):
    with pytest.raises(ValueError):
        parse_zoned_timestamp(text)


def test_unscaled_decimals_in_bulk():
    values = [0, 1, -1, 127, 128, -128, -129, 2**63, -(2**63) - 1, 10**38 - 1, -(10**38 - 1), None]
    decoded = unscaled_decimal128(pa.array([None if v is None else b64_unscaled(v) for v in values]))
    assert [None if d is None else int(d) for d in decoded.to_pylist()] == values


def test_widening_rules():
    assert is_lossless_widening(pa.int32(), pa.int64())
    assert not is_lossless_widening(pa.int64(), pa.int32())
    assert is_lossless_widening(pa.decimal128(12, 1), pa.decimal128(14, 2))
    assert not is_lossless_widening(pa.decimal128(14, 3), pa.decimal128(14, 2))
    assert not is_lossless_widening(pa.decimal128(13, 0), pa.decimal128(14, 2))
    assert is_lossless_widening(pa.timestamp("ms"), pa.timestamp("us", tz="UTC"))
    assert not is_lossless_widening(pa.timestamp("us", tz="UTC"), pa.timestamp("us"))
    assert not is_lossless_widening(pa.date32(), pa.timestamp("us", tz="UTC"))
    assert field_decoder(decimal_field("v", None, 2)).accepts(pa.decimal128(14, 2))  # checked per value


def test_nothing_but_message_content_is_caught(monkeypatch):
    # A bug in the decoder must surface, not turn every message into a dead letter.
    import cardo_pipeline.cdc.decode as decode_module

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(decode_module, "_decode_piece", broken)
    with pytest.raises(RuntimeError, match="bug"):
        decode([GOOD], THING)


def test_timezones_other_than_utc_for_ingested_at():
    batch = decode_batch([], THING, ingested_at=datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
    assert batch.rows.num_rows == 0
    row = decode_batch(
        records(GOOD), THING, ingested_at=datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    ).rows.to_pylist()[0]
    assert row["ingested_at"] == datetime(2026, 1, 1, tzinfo=UTC)


def _mixed_batch() -> list[bytes | None]:
    values: list[bytes | None] = [
        envelope(
            TOASTY_FIELDS, op="u", after={"id": i, "notes": UNAVAILABLE_VALUE, "memo": "m", "amount": "AQ=="}
        )
        for i in range(300)
    ]
    values[10] = b"garbage"
    values[20] = None
    values[30] = envelope(TOASTY_FIELDS, op="x", after={"id": 1})
    return values


def test_one_worker_and_concurrent_callers_decode_alike(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import cardo_pipeline.cdc.decode_bulk as bulk

    expected = decode(_mixed_batch(), TOASTY)
    with ThreadPoolExecutor(4) as callers:
        for batch in callers.map(lambda _: decode(_mixed_batch(), TOASTY), range(8)):
            assert batch.rows.equals(expected.rows) and batch.dead_letters.equals(expected.dead_letters)
    monkeypatch.setattr(bulk, "WORKERS", 1)
    inline = decode(_mixed_batch(), TOASTY)
    assert inline.rows.equals(expected.rows) and inline.dead_letters.equals(expected.dead_letters)
    assert sorted(errors(expected)) == [110, 130]
