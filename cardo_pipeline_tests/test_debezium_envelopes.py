"""Debezium envelopes: unit tests of `cardo_pipeline.cdc.encode` and proof that the Kafka bulk path is right.

The unit tests need nothing running. The stack test feeds one simulation to Postgres (captured by the real
Debezium 3.7 connector) and the same simulation to `KafkaEnvelopeSink`, then requires every key and value to
be equal, schema and before/after included, except the fields in IGNORED_FIELDS (timestamps and WAL positions,
which no two captures share) and the topic prefix in schema names.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardo_pipeline.cdc.encode import (
    UNAVAILABLE_VALUE,
    EncodedMessage,
    EnvelopeEncoder,
    _jackson_string,
    date_json,
    decimal_json,
    json_string,
    zoned_timestamp_json,
)
from cardo_pipeline.simulator.changes import RowChange, Transaction
from cardo_pipeline.tables import SOURCE_TABLES

# --- normalising two captures of the same changes ----------------------------------------------------------

DEBEZIUM = "3.7.0.Final"  # what the real connector reports as source.version
IGNORED_FIELDS = (
    "payload.ts_ms", "payload.ts_us", "payload.ts_ns",  # when the connector (or encoder) processed the event
    "payload.source.ts_ms", "payload.source.ts_us", "payload.source.ts_ns",  # the commit time
    "payload.source.txId", "payload.source.lsn", "payload.source.sequence",  # WAL positions and the xid
)
_VOLATILE = re.compile(r'"(ts_ms|ts_us|ts_ns|txId|lsn)":\d+|"sequence":"(?:[^"\\]|\\.)*"')
_SOURCE_START = ',"source":{"version":'  # cannot occur inside a row value: quotes there are escaped


def _blank(match: re.Match[str]) -> str:
    return f'"{match.group(1)}":0' if match.group(1) else '"sequence":"?"'


def normalise_key(key: bytes, prefix: str) -> str:
    text = key.decode()
    schema_end = text.index(',"payload":')
    schema = text[:schema_end].replace(f'"name":"{prefix}.public.', '"name":"servicing.public.')
    return schema + text[schema_end:]


def normalise_value(value: bytes | None, prefix: str) -> str | None:
    """Blank IGNORED_FIELDS and rename the topic prefix; schema, before, after, op and the rest stay as is."""
    if value is None:
        return None
    text = value.decode()
    schema_end = text.index(',"payload":')
    source_start = text.rindex(_SOURCE_START)
    schema, rows, tail = text[:schema_end], text[schema_end:source_start], text[source_start:]
    schema = schema.replace(f'"name":"{prefix}.public.', '"name":"servicing.public.')
    tail = tail.replace(f'{_SOURCE_START}"{DEBEZIUM}","connector":"postgresql","name":"{prefix}",',
                        f'{_SOURCE_START}"{DEBEZIUM}","connector":"postgresql","name":"servicing",', 1)
    return schema + rows + _VOLATILE.sub(_blank, tail)



# --- Java's default partitioner for keyed records (Kafka's Utils.murmur2) -----------------------------------

def murmur2(data: bytes) -> int:
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions

REAL_LOANS_KEY = (
    '{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,"field":"loan_id"}],"optional"'
    ':false,"name":"servicing.public.loans.Key"},"payload":{"loan_id":10}}'
)
REAL_LOANS_TOAST_UPDATE = (
    '{"schema":{"type":"struct","fields":[{"type":"struct","fields":[{"type":"int64","optional":false,"fi'
    'eld":"loan_id"},{"type":"int64","optional":false,"field":"borrower_id"},{"type":"string","optional":'
    'false,"field":"product"},{"type":"string","optional":false,"field":"currency"},{"type":"bytes","opti'
    'onal":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","co'
    'nnect.decimal.precision":"14"},"field":"principal"},{"type":"bytes","optional":false,"name":"org.apa'
    'che.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"5","connect.decimal.precision":"7'
    '"},"field":"interest_rate"},{"type":"int32","optional":false,"field":"term_months"},{"type":"int32",'
    '"optional":false,"name":"io.debezium.time.Date","version":1,"field":"origination_date"},{"type":"int'
    '32","optional":false,"name":"io.debezium.time.Date","version":1,"field":"maturity_date"},{"type":"by'
    'tes","optional":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scal'
    'e":"2","connect.decimal.precision":"14"},"field":"outstanding_principal"},{"type":"string","optional'
    '":false,"field":"status"},{"type":"int32","optional":false,"field":"days_past_due"},{"type":"string"'
    ',"optional":true,"field":"servicer_notes"},{"type":"string","optional":false,"name":"io.debezium.tim'
    'e.ZonedTimestamp","version":1,"field":"updated_at"}],"optional":true,"name":"servicing.public.loans.'
    'Value","field":"before"},{"type":"struct","fields":[{"type":"int64","optional":false,"field":"loan_i'
    'd"},{"type":"int64","optional":false,"field":"borrower_id"},{"type":"string","optional":false,"field'
    '":"product"},{"type":"string","optional":false,"field":"currency"},{"type":"bytes","optional":false,'
    '"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decima'
    'l.precision":"14"},"field":"principal"},{"type":"bytes","optional":false,"name":"org.apache.kafka.co'
    'nnect.data.Decimal","version":1,"parameters":{"scale":"5","connect.decimal.precision":"7"},"field":"'
    'interest_rate"},{"type":"int32","optional":false,"field":"term_months"},{"type":"int32","optional":f'
    'alse,"name":"io.debezium.time.Date","version":1,"field":"origination_date"},{"type":"int32","optiona'
    'l":false,"name":"io.debezium.time.Date","version":1,"field":"maturity_date"},{"type":"bytes","option'
    'al":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","conn'
    'ect.decimal.precision":"14"},"field":"outstanding_principal"},{"type":"string","optional":false,"fie'
    'ld":"status"},{"type":"int32","optional":false,"field":"days_past_due"},{"type":"string","optional":'
    'true,"field":"servicer_notes"},{"type":"string","optional":false,"name":"io.debezium.time.ZonedTimes'
    'tamp","version":1,"field":"updated_at"}],"optional":true,"name":"servicing.public.loans.Value","fiel'
    'd":"after"},{"type":"struct","fields":[{"type":"string","optional":false,"field":"version"},{"type":'
    '"string","optional":false,"field":"connector"},{"type":"string","optional":false,"field":"name"},{"t'
    'ype":"int64","optional":false,"field":"ts_ms"},{"type":"string","optional":true,"name":"io.debezium.'
    'data.Enum","version":1,"parameters":{"allowed":"true,first,first_in_data_collection,last_in_data_col'
    'lection,last,false,incremental"},"default":"false","field":"snapshot"},{"type":"string","optional":f'
    'alse,"field":"db"},{"type":"string","optional":true,"field":"sequence"},{"type":"int64","optional":t'
    'rue,"field":"ts_us"},{"type":"int64","optional":true,"field":"ts_ns"},{"type":"string","optional":fa'
    'lse,"field":"schema"},{"type":"string","optional":false,"field":"table"},{"type":"int64","optional":'
    'true,"field":"txId"},{"type":"int64","optional":true,"field":"lsn"},{"type":"int64","optional":true,'
    '"field":"xmin"},{"type":"string","optional":true,"field":"origin"},{"type":"int64","optional":true,"'
    'field":"origin_lsn"}],"optional":false,"name":"io.debezium.connector.postgresql.Source","version":1,'
    '"field":"source"},{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"},{"type"'
    ':"int64","optional":false,"field":"total_order"},{"type":"int64","optional":false,"field":"data_coll'
    'ection_order"}],"optional":true,"name":"event.block","version":1,"field":"transaction"},{"type":"str'
    'ing","optional":false,"field":"op"},{"type":"int64","optional":true,"field":"ts_ms"},{"type":"int64"'
    ',"optional":true,"field":"ts_us"},{"type":"int64","optional":true,"field":"ts_ns"}],"optional":false'
    ',"name":"servicing.public.loans.Envelope","version":2},"payload":{"before":null,"after":{"loan_id":1'
    '0,"borrower_id":1,"product":"mortgage","currency":"EUR","principal":"AJiWgA==","interest_rate":"DDU='
    '","term_months":240,"origination_date":19723,"maturity_date":27028,"outstanding_principal":"AJiWgA=='
    '","status":"active","days_past_due":30,"servicer_notes":"__debezium_unavailable_value","updated_at":'
    '"2024-02-01T00:00:00.000000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"se'
    'rvicing","ts_ms":1795436237251,"snapshot":"false","db":"servicing","sequence":"[\\"26497456\\",\\"26497'
    '512\\"]","ts_us":1795436237251109,"ts_ns":1795436237251109000,"schema":"public","table":"loans","txId'
    '":732,"lsn":26497512,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op":"u","ts_ms'
    '":1795436237609,"ts_us":1795436237609784,"ts_ns":1795436237609784000}}'
)
def test_murmur2_matches_kafka_test_vectors():
    # From Kafka's UtilsTest.testMurmur2.
    vectors = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    assert {data: murmur2(data) for data in vectors} == vectors


# --- scalar encodings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "scale", "expected"),
    [
        (Decimal("0.00"), 2, '"AA=="'),
        (Decimal("-0.00"), 2, '"AA=="'),
        (Decimal("0.01"), 2, '"AQ=="'),
        (Decimal("1.27"), 2, '"fw=="'),  # 127: the largest one-byte value
        (Decimal("1.28"), 2, '"AIA="'),  # 128 needs a sign byte
        (Decimal("-1.28"), 2, '"gA=="'),  # -128 still fits one byte
        (Decimal("-1.29"), 2, '"/38="'),
        (Decimal("128.00"), 2, '"MgA="'),
        (Decimal("100000.00"), 2, '"AJiWgA=="'),
        (Decimal("-12345.67"), 2, '"7Sl5"'),  # measured on Debezium, like the ones below
        (Decimal("99999999.99"), 2, '"AlQL4/8="'),
        (Decimal("-0.00001"), 5, '"/w=="'),
        (Decimal("0.03125"), 5, '"DDU="'),
        (Decimal("12"), 2, '"BLA="'),  # not quantized: scaled to the column
        (7, 2, '"Arw="'),
    ],
)
def test_decimal_is_base64_of_the_unscaled_twos_complement(value, scale, expected):
    assert decimal_json(value, scale) == expected


def test_decimal_with_extra_digits_rounds_half_away_from_zero_like_postgres():
    assert decimal_json(Decimal("0.005"), 2) == decimal_json(Decimal("0.01"), 2)
    assert decimal_json(Decimal("-0.005"), 2) == decimal_json(Decimal("-0.01"), 2)
    assert decimal_json(Decimal("0.004"), 2) == '"AA=="'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (date(1970, 1, 1), "0"), (date(2024, 1, 1), "19723"), (date(1960, 2, 29), "-3594"),
        (date(2044, 1, 1), "27028"),
    ],
)
def test_date_is_days_since_epoch(value, expected):
    assert date_json(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), '"2024-01-02T03:04:05.123456Z"'),
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), '"2024-01-02T03:04:05.000000Z"'),
        (datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC), '"1969-12-31T23:59:59.500000Z"'),
        (datetime(2024, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=2))), '"2024-01-01T23:00:00.000000Z"'),
    ],
)
def test_timestamptz_is_a_utc_zoned_timestamp_with_six_fraction_digits(value, expected):
    assert zoned_timestamp_json(value) == expected


def test_naive_timestamps_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        zoned_timestamp_json(datetime(2024, 1, 1))


def test_strings_are_escaped_like_jackson():
    # Measured: what Kafka's JsonConverter wrote for this text inserted into borrowers.full_name.
    text = 'a\x01b\tc\nd"e\\f/g\u2028h\U0001F600i\x7fj\x1fk\x08l\x0cm\rn<>&Ä'
    assert json_string(text) == (
        '"a\\u0001b\\tc\\nd\\"e\\\\f/g\u2028h\\uD83D\\uDE00i\x7fj\\u001Fk\\bl\\fm\\rn<>&Ä"'
    )
    assert json_string("a literal \\u001f stays") == '"a literal \\\\u001f stays"'


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_string_fast_paths_agree_with_the_general_escaper(text):
    assert json_string(text) == _jackson_string(text)
    assert json.loads(json_string(text)) == text


# --- whole messages -----------------------------------------------------------------------------------------

T0 = datetime(2024, 2, 1, 9, 30, tzinfo=UTC)
LONG_NOTE = "2024-01-05 [M. Rossi] Contacted borrower by phone.\n" * 80  # 4,000+ bytes: stored out of line


def _loan(**values: Any) -> dict[str, Any]:
    row = {
        "loan_id": 10, "borrower_id": 1, "product": "mortgage", "currency": "EUR",
        "principal": Decimal("100000.00"), "interest_rate": Decimal("0.03125"), "term_months": 240,
        "origination_date": date(2024, 1, 1), "maturity_date": date(2044, 1, 1),
        "outstanding_principal": Decimal("100000.00"), "status": "active", "days_past_due": 0,
        "servicer_notes": None, "updated_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    return row | values


def _payment(**values: Any) -> dict[str, Any]:
    row = {
        "payment_id": 100, "loan_id": 11, "due_date": date(2024, 2, 1), "amount_due": Decimal("-0.50"),
        "paid_date": None, "amount_paid": Decimal("0.00"), "status": "scheduled",
        "updated_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    return row | values


def _encode(*changes: RowChange, encoder: EnvelopeEncoder | None = None) -> list[EncodedMessage]:
    return (encoder or EnvelopeEncoder()).encode_transaction(Transaction(changes, T0))


def _payload(message: EncodedMessage) -> dict[str, Any]:
    assert message.value is not None
    return json.loads(message.value)["payload"]


def test_encoder_reproduces_a_real_debezium_message():
    # Debezium's own message for UPDATE loans SET days_past_due = 30, updated_at = '2024-02-01' (loan 10 has
    # a 4,000-byte note, so its after-image carries the unchanged-TOAST placeholder).
    update = RowChange(
        "loans", "u",
        _loan(servicer_notes="x" * 4000, days_past_due=30, updated_at=datetime(2024, 2, 1, tzinfo=UTC)),
        changed=frozenset({"days_past_due", "updated_at"}),
    )
    (message,) = _encode(update)
    assert message.topic == "servicing.public.loans"
    assert message.key.decode() == REAL_LOANS_KEY
    expected = normalise_value(REAL_LOANS_TOAST_UPDATE.encode(), "servicing")
    assert normalise_value(message.value, "servicing") == expected


def test_every_table_gets_its_schema_names_from_the_topic_prefix():
    encoder = EnvelopeEncoder("bulk")
    for table in SOURCE_TABLES:
        encoded = encoder.tables[table.name]
        assert encoded.topic == f"bulk.public.{table.name}"
        key = json.loads(encoded.key_head + b"null}")
        assert key["schema"]["name"] == f"bulk.public.{table.name}.Key"
        assert [f["field"] for f in key["schema"]["fields"]] == list(table.primary_key)
        value = json.loads(encoded.value_head + b"null}}")["schema"]
        assert (value["name"], value["version"]) == (f"bulk.public.{table.name}.Envelope", 2)
        before, after = value["fields"][:2]
        assert before["name"] == after["name"] == f"bulk.public.{table.name}.Value"
        assert [f["field"] for f in after["fields"]] == table.column_names
        assert [f["optional"] for f in after["fields"]] == [c.nullable for c in table.columns]


def test_create_update_delete_and_the_tombstone():
    messages = _encode(
        RowChange("payments", "c", _payment()),
        RowChange("payments", "u", _payment(status="paid"), changed=frozenset({"status"})),
        RowChange("payments", "d", _payment(status="paid")),
    )
    assert [m.value is None for m in messages] == [False, False, False, True]
    create, update, delete, tombstone = messages
    assert len({m.key for m in messages}) == 1
    assert json.loads(tombstone.key)["payload"] == {"payment_id": 100}
    assert [_payload(m)["op"] for m in (create, update, delete)] == ["c", "u", "d"]
    assert _payload(create)["before"] is None and _payload(update)["before"] is None
    assert _payload(delete)["after"] is None
    assert _payload(create)["after"] == {
        "payment_id": 100, "loan_id": 11, "due_date": 19754, "amount_due": "zg==", "paid_date": None,
        "amount_paid": "AA==", "status": "scheduled", "updated_at": "2024-01-01T00:00:00.000000Z",
    }
    assert _payload(update)["after"]["status"] == "paid"


def test_delete_before_image_holds_the_key_and_type_defaults():
    messages = _encode(
        RowChange("payments", "d", _payment(paid_date=date(2024, 2, 3))),
        RowChange("loans", "d", _loan(servicer_notes="short note")),
    )
    payment, loan = (_payload(m)["before"] for m in messages if m.value is not None)
    assert payment == {  # measured on Debezium: NOT NULL columns at their type default, nullable ones null
        "payment_id": 100, "loan_id": 0, "due_date": 0, "amount_due": "AA==", "paid_date": None,
        "amount_paid": "AA==", "status": "", "updated_at": "1970-01-01T00:00:00Z",
    }
    assert loan == {
        "loan_id": 10, "borrower_id": 0, "product": "", "currency": "", "principal": "AA==",
        "interest_rate": "AA==", "term_months": 0, "origination_date": 0, "maturity_date": 0,
        "outstanding_principal": "AA==", "status": "", "days_past_due": 0, "servicer_notes": None,
        "updated_at": "1970-01-01T00:00:00Z",
    }


@pytest.mark.parametrize(
    ("op", "note", "changed", "expected"),
    [
        ("u", LONG_NOTE, {"days_past_due"}, UNAVAILABLE_VALUE),  # long and not SET: not in the WAL record
        ("u", LONG_NOTE, {"days_past_due", "servicer_notes"}, LONG_NOTE),  # SET: the new value is logged
        ("u", "short note", {"days_past_due"}, "short note"),  # short values live in the row itself
        ("u", None, {"days_past_due"}, None),
        ("u", LONG_NOTE, set(), LONG_NOTE),  # no column list: a full-row update
        ("c", LONG_NOTE, set(), LONG_NOTE),  # inserts always carry every value
    ],
)
def test_unchanged_toasted_note_becomes_the_placeholder(op, note, changed, expected):
    (message,) = _encode(RowChange("loans", op, _loan(servicer_notes=note), changed=frozenset(changed)))
    assert _payload(message)["after"]["servicer_notes"] == expected


def test_char_columns_are_blank_padded_like_postgres_stores_them():
    (message,) = _encode(RowChange("loans", "c", _loan(currency="EU")))
    assert _payload(message)["after"]["currency"] == "EU "


def test_source_block_one_tx_id_per_transaction_and_increasing_lsns():
    encoder = EnvelopeEncoder("servicing", start_lsn=5000, start_tx_id=77)
    first = _encode(RowChange("payments", "c", _payment()), RowChange("loans", "c", _loan()), encoder=encoder)
    assert _encode(encoder=encoder) == []  # an empty transaction is not replicated and takes no txId
    second = _encode(RowChange("payments", "d", _payment()), encoder=encoder)
    sources = [_payload(m)["source"] for m in first + second if m.value is not None]
    assert [s["txId"] for s in sources] == [77, 77, 78]
    lsns = [s["lsn"] for s in sources]
    assert lsns[0] == 5000 and lsns == sorted(set(lsns))
    assert [json.loads(s["sequence"]) for s in sources] == [
        [str(lsns[0]), str(lsns[0])], [str(lsns[0]), str(lsns[1])], [str(lsns[2]), str(lsns[2])],
    ]
    micros = int(T0.timestamp()) * 1_000_000
    assert sources[0] == {
        "version": "3.7.0.Final", "connector": "postgresql", "name": "servicing", "ts_ms": micros // 1000,
        "snapshot": "false", "db": "servicing", "sequence": sources[0]["sequence"], "ts_us": micros,
        "ts_ns": micros * 1000, "schema": "public", "table": "payments", "txId": 77, "lsn": 5000,
        "xmin": None, "origin": None, "origin_lsn": None,
    }
    payload = _payload(first[0])
    assert (payload["transaction"], payload["ts_ms"], payload["ts_us"]) == (None, micros // 1000, micros)


def test_unknown_tables_and_ops_are_refused():
    with pytest.raises(KeyError, match="no source table 'accounts'"):
        _encode(RowChange("accounts", "c", {"id": 1}))
    with pytest.raises(ValueError, match="unsupported op 'r'"):
        _encode(RowChange("payments", "r", _payment()))  # type: ignore[arg-type]


def test_normalisation_blanks_only_the_ignored_fields():
    (message,) = _encode(RowChange("payments", "c", _payment()), encoder=EnvelopeEncoder("bulk"))
    normalised = json.loads(normalise_value(message.value, "bulk"))
    original = json.loads(message.value)
    for path in IGNORED_FIELDS:
        *parents, leaf = path.split(".")
        for node in (normalised, original):
            for part in parents:
                node = node[part]
            node.pop(leaf)
    original["payload"]["source"]["name"] = "servicing"
    assert normalised["schema"]["name"] == "servicing.public.payments.Envelope"
    assert normalised["payload"] == original["payload"]


# --- the equivalence test: real Debezium versus KafkaEnvelopeSink -------------------------------------------

SIMULATION = {"loans": 40, "months": 6, "seed": 20240607}
DELIVERY_TIMEOUT_S = 180


@dataclass(frozen=True)
class Captured:
    partition: int
    offset: int
    key: bytes
    value: bytes | None


def _consumer(bootstrap: str):
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": bootstrap, "group.id": "test-debezium-envelopes",
                     "enable.auto.commit": False, "enable.partition.eof": False})


def _end_offsets(consumer, topics: list[str]) -> dict[tuple[str, int], int]:
    """High watermarks of every partition; a topic that does not exist yet counts as empty."""
    from confluent_kafka import TopicPartition

    existing = consumer.list_topics(timeout=10).topics
    offsets = {}
    for topic in topics:
        if topic not in existing:
            continue
        for partition in existing[topic].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            offsets[topic, partition] = high
    return offsets


def _new_messages(start: dict[tuple[str, int], int], end: dict[tuple[str, int], int]) -> int:
    return sum(high - start.get(tp, 0) for tp, high in end.items())


def _wait_until_quiet(consumer, topics: list[str], quiet_s: float = 3.0) -> dict[tuple[str, int], int]:
    """Wait until no message arrives for `quiet_s`, so whatever Debezium still had in flight is not ours."""
    offsets, since = _end_offsets(consumer, topics), time.monotonic()
    deadline = since + DELIVERY_TIMEOUT_S
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the servicing topics never stopped growing"
        time.sleep(0.5)
        if (now := _end_offsets(consumer, topics)) != offsets:
            offsets, since = now, time.monotonic()
    return offsets


def _wait_for_truncates(consumer, start: dict[tuple[str, int], int], topics: list[str]) -> None:
    """Read on from `start` until every topic has delivered a truncate event (op "t"). On a fresh stack the
    topics do not exist yet and are created by these very events, so the partitions are listed anew each time."""
    waiting = set(topics)
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while waiting:
        assert time.monotonic() < deadline, f"no truncate event arrived on {sorted(waiting)}"
        end = _end_offsets(consumer, topics)
        for topic, messages in _read(consumer, start, end).items():
            if any(b'"op":"t"' in (m.value or b"") for m in messages):
                waiting.discard(topic)
        start = end
        time.sleep(0.5)


def _wait_for(consumer, topics, start, expected: int) -> dict[tuple[str, int], int]:
    """Poll until exactly `expected` new messages are there and stay so for a moment (no extra ones trail)."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while (arrived := _new_messages(start, _end_offsets(consumer, topics))) < expected:
        assert time.monotonic() < deadline, f"Debezium delivered {arrived} of {expected} messages"
        time.sleep(0.5)
    time.sleep(2)
    end = _end_offsets(consumer, topics)
    assert _new_messages(start, end) == expected
    return end


def _read(consumer, start, end) -> dict[str, list[Captured]]:
    """Every message between the offsets, by topic, in partition then offset order."""
    from confluent_kafka import TopicPartition

    wanted = {tp: (start.get(tp, 0), high) for tp, high in end.items() if high > start.get(tp, 0)}
    consumer.assign([TopicPartition(topic, p, low) for (topic, p), (low, _) in wanted.items()])
    got: dict[tuple[str, int], list[Captured]] = defaultdict(list)
    deadline = time.monotonic() + 60
    while sum(len(v) for v in got.values()) < sum(high - low for low, high in wanted.values()):
        assert time.monotonic() < deadline, "timed out reading the captured messages"
        for message in consumer.consume(1000, timeout=1):
            assert message.error() is None, message.error()
            tp = (message.topic(), message.partition())
            if message.offset() < wanted[tp][1]:
                captured = Captured(message.partition(), message.offset(), message.key(), message.value())
                got[tp].append(captured)
    consumer.unassign()
    by_topic: dict[str, list[Captured]] = defaultdict(list)
    for (topic, _), messages in sorted(got.items()):
        by_topic[topic].extend(sorted(messages, key=lambda m: m.offset))
    return by_topic


def _in_commit_order(messages: list[Captured]) -> list[tuple[int, int, Captured]]:
    """(lsn, txId, message) sorted by LSN; a tombstone takes the position of the delete right before it."""
    placed, previous = [], {}
    for message in messages:  # partition then offset order
        if message.value is None:
            lsn, tx_id, _ = previous[message.partition]
            placed.append((lsn, tx_id, message))
            continue
        source = json.loads(message.value)["payload"]["source"]
        previous[message.partition] = (source["lsn"], source["txId"], message)
        placed.append(previous[message.partition])
    # Each partition must already be in commit order; the sort then only interleaves partitions.
    for partition in {m.partition for m in messages}:
        lsns = [lsn for lsn, _, m in placed if m.partition == partition]
        assert lsns == sorted(lsns), f"partition {partition} is not in commit order"
    return sorted(placed, key=lambda item: (item[0], item[2].value is None))


def _normalise(message: Captured, prefix: str) -> tuple[str, str | None]:
    return normalise_key(message.key, prefix), normalise_value(message.value, prefix)


def _parsed(message: tuple[str, str | None]) -> tuple[Any, Any]:
    key, value = message
    return json.loads(key), None if value is None else json.loads(value)


def _transaction_shape(ordered: list[tuple[int, int, Captured]]) -> list[int]:
    """The transaction of each message as a rank (0 = first transaction), ignoring the txIds themselves."""
    ranks: dict[int, int] = {}
    return [ranks.setdefault(tx_id, len(ranks)) for _, tx_id, _ in sorted(ordered, key=lambda item: item[0])]


@pytest.mark.stack
@pytest.mark.timeout(900)
def test_kafka_envelope_sink_matches_real_debezium(stack, servicing_dsn, kafka_bootstrap):
    import psycopg

    from cardo_pipeline.simulator import simulate
    from cardo_pipeline.simulator.kafka_sink import KafkaEnvelopeSink
    from cardo_pipeline.simulator.postgres_sink import PostgresSink

    tables = [t.name for t in SOURCE_TABLES]
    real_topics = [f"servicing.public.{t}" for t in tables]
    bulk_topics = [f"bulk.public.{t}" for t in tables]
    consumer = _consumer(kafka_bootstrap)
    try:
        # Clear the tables, and see their truncate events arrive before counting starts: a quiet spell alone was
        # not enough once (Debezium delivered the four truncates after three quiet seconds, inside the window).
        before_truncate = _end_offsets(consumer, real_topics)
        with psycopg.connect(servicing_dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join(f'public.{t}' for t in tables)}, simulator.loan_truth")
        _wait_for_truncates(consumer, before_truncate, real_topics)
        real_start = _wait_until_quiet(consumer, real_topics)

        with PostgresSink(servicing_dsn) as postgres:
            summary = simulate(postgres, **SIMULATION)
        assert summary.deletes > 0 and summary.toast_unchanged_updates > 0, "the run must exercise both rules"
        expected = summary.total_changes + summary.deletes  # every delete is followed by a tombstone
        real = _read(consumer, real_start, _wait_for(consumer, real_topics, real_start, expected))

        bulk_start = _end_offsets(consumer, bulk_topics)
        with KafkaEnvelopeSink(kafka_bootstrap, "bulk") as bulk_sink:
            bulk_summary = simulate(bulk_sink, **SIMULATION)
        assert bulk_summary.as_dict() == summary.as_dict()
        bulk = _read(consumer, bulk_start, _end_offsets(consumer, bulk_topics))
        topics = consumer.list_topics(timeout=10).topics
        partitions = {topic: len(meta.partitions) for topic, meta in topics.items()}
    finally:
        consumer.close()

    compared = 0
    real_all, bulk_all = [], []
    for table in tables:
        real_messages, bulk_messages = real[f"servicing.public.{table}"], bulk[f"bulk.public.{table}"]
        assert len(bulk_messages) == len(real_messages), table
        # Partitioning: both follow Java's default partitioner (murmur2 of the key bytes). The keys differ by
        # their schema name (servicing. / bulk.), so the partitions themselves can differ.
        assert partitions[f"bulk.public.{table}"] == partitions[f"servicing.public.{table}"]
        for prefix, messages in (("servicing", real_messages), ("bulk", bulk_messages)):
            count = partitions[f"{prefix}.public.{table}"]
            assert [m.partition for m in messages] == [java_partition(m.key, count) for m in messages]
        real_ordered, bulk_ordered = _in_commit_order(real_messages), _in_commit_order(bulk_messages)
        real_all += real_ordered
        bulk_all += bulk_ordered
        real_normalised = [_normalise(m, "servicing") for _, _, m in real_ordered]
        bulk_normalised = [_normalise(m, "bulk") for _, _, m in bulk_ordered]
        pairs = zip(real_normalised, bulk_normalised, strict=True)
        for position, (expected_message, actual_message) in enumerate(pairs):
            if actual_message != expected_message:  # show a readable field-level diff before the exact text
                assert _parsed(actual_message) == _parsed(expected_message), f"{table} message {position}"
            assert actual_message == expected_message, f"{table} message {position} differs in its bytes"
        compared += len(real_normalised)
    # Same grouping of changes into transactions, in the same commit order.
    assert _transaction_shape(bulk_all) == _transaction_shape(real_all)
    placeholders = sum(UNAVAILABLE_VALUE.encode() in (m.value or b"") for m in real["servicing.public.loans"])
    assert placeholders == summary.toast_unchanged_updates
    assert compared == expected
    print(f"\ncompared {compared} messages ({summary.total_changes} changes, {summary.deletes} tombstones, "
          f"{placeholders} TOAST placeholders) in {summary.transactions} transactions")
