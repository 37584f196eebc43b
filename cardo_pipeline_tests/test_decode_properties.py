"""Property tests of the decoder: what the encoder writes decodes back to the rows; garbage never escapes.

Rows are generated per registry table from each column's Postgres type (None for nullable columns, decimal
extremes, dates far from the epoch, timestamps with microseconds and offsets), encoded byte for byte as
Debezium writes them by `cardo_pipeline.cdc.encode`, decoded, and compared. Garbage (random bytes, and valid
messages with random edits) always ends in dead letters or rows, never in an exception, and the counts always
add up.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cardo_pipeline.cdc.arrow_types import raw_arrow_schema
from cardo_pipeline.cdc.decode import KafkaMessages, KafkaRecord, decode_batch
from cardo_pipeline.cdc.encode import TOAST_OUT_OF_LINE_BYTES, EnvelopeEncoder
from cardo_pipeline.tables import SOURCE_TABLES, TABLES_BY_NAME, Column, SourceTable

pytestmark = pytest.mark.usefixtures("decoder_path")  # every test on the native and the Python path


INGESTED_AT = datetime(2026, 1, 1, tzinfo=UTC)
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Change(NamedTuple):  # the RowChange / Transaction protocol the encoder reads
    table: str
    op: str
    row: dict
    changed: frozenset = frozenset()


class Transaction(NamedTuple):
    changes: tuple
    committed_at: datetime


# --- values per Postgres type -------------------------------------------------------------------------------

_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")
_CHAR = re.compile(r"char\((\d+)\)")
_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))])


def _decimals(precision: int, scale: int) -> st.SearchStrategy[Decimal]:
    largest = Decimal(10**precision - 1).scaleb(-scale)
    return st.one_of(
        st.sampled_from(
            [largest, -largest, Decimal(0), Decimal(1).scaleb(-scale), -Decimal(1).scaleb(-scale)]
        ),
        st.decimals(
            min_value=-largest, max_value=largest, places=scale, allow_nan=False, allow_infinity=False
        ),
    )


def _text() -> st.SearchStrategy[str]:
    long_text = st.builds(
        lambda piece, times: piece * times,
        st.text(min_size=1, max_size=4),
        st.integers(TOAST_OUT_OF_LINE_BYTES, TOAST_OUT_OF_LINE_BYTES + 200),
    )
    return st.one_of(st.text(max_size=30), long_text)


def values_for(column: Column) -> st.SearchStrategy[Any]:
    pg_type = column.pg_type
    if pg_type == "bigint":
        strategy: st.SearchStrategy[Any] = st.integers(-(2**63), 2**63 - 1)
    elif pg_type == "integer":
        strategy = st.integers(-(2**31), 2**31 - 1)
    elif pg_type == "text":
        strategy = _text()
    elif match := _CHAR.fullmatch(pg_type):
        strategy = st.text(max_size=int(match.group(1)))
    elif match := _NUMERIC.fullmatch(pg_type):
        strategy = _decimals(int(match.group(1)), int(match.group(2)))
    elif pg_type == "date":
        strategy = st.dates()
    elif pg_type == "timestamptz":
        strategy = st.datetimes(
            min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES
        )
    else:
        raise AssertionError(f"no strategy for {pg_type}: add one when the registry gets the type")
    return st.one_of(st.none(), strategy) if column.nullable else strategy


def rows_for(table: SourceTable) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({c.name: values_for(c) for c in table.columns})


def changes_for(table: SourceTable) -> st.SearchStrategy[Change]:
    changed = st.frozensets(st.sampled_from(table.column_names), max_size=3)
    return st.builds(Change, st.just(table.name), st.sampled_from(["c", "u", "d"]), rows_for(table), changed)


# --- what the decoder must give back ------------------------------------------------------------------------


def _blank_padded(table: SourceTable, row: dict[str, Any]) -> dict[str, Any]:
    """char(n) is stored blank-padded, and Debezium sends it so."""
    padded = dict(row)
    for column in table.columns:
        if (match := _CHAR.fullmatch(column.pg_type)) and row[column.name] is not None:
            padded[column.name] = row[column.name].ljust(int(match.group(1)))
    return padded


def _delete_default(column: Column) -> Any:
    """A delete's before-image under REPLICA IDENTITY DEFAULT: type defaults for non-key NOT NULL columns."""
    if column.nullable:
        return None
    pg_type = column.pg_type
    if pg_type in ("bigint", "integer") or _NUMERIC.fullmatch(pg_type):
        return 0
    if pg_type == "date":
        return date(1970, 1, 1)
    if pg_type == "timestamptz":
        return datetime(1970, 1, 1, tzinfo=UTC)
    return ""


def expected_rows(table: SourceTable, change: Change) -> list[tuple[str, Any, Any, list[str]]]:
    """(op, before, after, unchanged_toast) of the rows the change must decode to."""
    row = _blank_padded(table, change.row)
    if change.op == "c":
        return [("c", None, row, [])]
    if change.op == "u":
        toasted = [
            name
            for name in table.toasted
            if change.changed
            and name not in change.changed
            and row[name] is not None
            and len(row[name].encode()) >= TOAST_OUT_OF_LINE_BYTES
        ]
        return [("u", None, {**row, **dict.fromkeys(toasted)}, toasted)]
    before = {
        c.name: row[c.name] if c.name in table.primary_key else _delete_default(c) for c in table.columns
    }
    return [("d", before, None, []), ("tombstone", None, None, [])]


def decoded_rows(batch) -> list[tuple[str, Any, Any, list[str]]]:
    return [(r["op"], r["before"], r["after"], r["unchanged_toast"]) for r in batch.rows.to_pylist()]


# --- properties ---------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(st.data())
def test_every_registry_table_round_trips_through_the_encoder(data):
    table = data.draw(st.sampled_from(SOURCE_TABLES), label="table")
    changes = data.draw(st.lists(changes_for(table), min_size=1, max_size=8), label="changes")
    encoder = EnvelopeEncoder()
    records = [
        KafkaRecord(m.topic, 0, offset, m.key, m.value, 1_700_000_000_000)
        for offset, m in enumerate(
            encoder.encode_transaction(
                Transaction(tuple(changes), datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC))
            )
        )
    ]
    batch = decode_batch(records, table, ingested_at=INGESTED_AT)

    assert batch.dead_letters.num_rows == 0, batch.dead_letters["error"].to_pylist()
    assert batch.new_columns == {}
    assert batch.rows.schema == raw_arrow_schema(table)
    assert decoded_rows(batch) == [
        expected for change in changes for expected in expected_rows(table, change)
    ]
    keys = [r["key"] for r in batch.rows.to_pylist()]
    pk = table.primary_key[0]
    assert keys == [
        f'{{"{pk}":{change.row[pk]}}}' for change in changes for _ in expected_rows(table, change)
    ]
    lsns = [lsn for lsn in batch.rows["source_lsn"].to_pylist() if lsn is not None]
    assert lsns == sorted(lsns) and len(set(lsns)) == len(changes)


def _valid_messages(count: int) -> list[tuple[bytes, bytes | None]]:
    loans = TABLES_BY_NAME["loans"]
    row = {
        "loan_id": 1,
        "borrower_id": 2,
        "product": "auto",
        "currency": "EUR",
        "principal": Decimal("1.00"),
        "interest_rate": Decimal("0.05"),
        "term_months": 12,
        "origination_date": date(2024, 1, 1),
        "maturity_date": date(2025, 1, 1),
        "outstanding_principal": Decimal("0.50"),
        "status": "active",
        "days_past_due": 0,
        "servicer_notes": "ok",
        "updated_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    changes = tuple(Change(loans.name, "c", {**row, "loan_id": i}) for i in range(count))
    return [
        (m.key, m.value)
        for m in EnvelopeEncoder().encode_transaction(Transaction(changes, datetime(2024, 5, 1, tzinfo=UTC)))
    ]


VALID = _valid_messages(6)


@st.composite
def edited(draw: st.DrawFn, data: bytes) -> bytes:
    """A valid message with a few random edits: bytes replaced, removed, inserted, or the message cut."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "delete", "insert", "cut"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "replace":
            data = data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at + 1 :]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 40)) :]
        elif kind == "insert":
            insert = draw(
                st.one_of(
                    st.binary(max_size=8),
                    st.sampled_from(
                        [b"\n", b"null", b'"', b"{", b"}", b",", b"\\u0000", b"\xff", b'"x":1,', b'"op":"d",']
                    ),
                )
            )
            data = data[:at] + insert + data[at:]
        else:
            data = data[:at]
    return data


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


@st.composite
def retyped(draw: st.DrawFn, value: bytes) -> bytes:
    """A valid message, still valid JSON in the same layout, with one payload member replaced by any value."""
    head, payload = (
        value[: value.index(b',"payload":') + 11],
        json.loads(value[value.index(b',"payload":') + 11 : -1]),
    )
    part = draw(st.sampled_from(["after", "source", "op", "before"]))
    if isinstance(payload.get(part), dict) and draw(st.booleans()):
        payload[part][draw(st.sampled_from(sorted(payload[part])))] = draw(JSON_VALUES)
    else:
        payload[part] = draw(JSON_VALUES)
    return head + json.dumps(payload, separators=(",", ":")).encode() + b"}"


GARBAGE = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.sampled_from([v for _, v in VALID]).flatmap(edited),
    st.sampled_from([v for _, v in VALID]).flatmap(retyped),
    st.sampled_from(
        [
            b"{}",
            b"[]",
            b"null",
            b'{"schema":null,"payload":{}}',
            b'{"schema":{},"payload":{}}',
            b'{"schema":{"type":"struct","fields":[]},"payload":{"op":"c"}}',
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=60), st.sampled_from([k for k, _ in VALID])), GARBAGE
        ),
        max_size=12,
    ),
    st.lists(st.integers(0, len(VALID) - 1), max_size=6),
    st.randoms(),
)
def test_garbage_never_raises_and_never_costs_a_valid_message(garbage, valid_picks, random):
    mixed = [(key, value, False) for key, value in garbage]
    mixed += [(*VALID[i], True) for i in valid_picks]
    random.shuffle(mixed)
    records = [
        KafkaRecord("servicing.public.loans", 0, offset, k, v, 0) for offset, (k, v, _) in enumerate(mixed)
    ]
    batch = decode_batch(records, TABLES_BY_NAME["loans"], ingested_at=INGESTED_AT)

    assert batch.rows.num_rows + batch.dead_letters.num_rows == len(records)
    landed = batch.rows["offset"].to_pylist()
    dead = batch.dead_letters["offset"].to_pylist()
    assert sorted(landed + dead) == list(range(len(records)))
    assert landed == sorted(landed) and dead == sorted(dead)
    assert all(batch.dead_letters["error"].to_pylist())
    assert batch.rows.schema == raw_arrow_schema(TABLES_BY_NAME["loans"], batch.new_columns)
    batch.rows.validate(full=True)
    batch.dead_letters.validate(full=True)
    valid_offsets = {offset for offset, (_, _, valid) in enumerate(mixed) if valid}
    assert valid_offsets <= set(landed)
    # What a valid message decodes to does not depend on its neighbours.
    for offset in valid_offsets:
        alone = decode_batch([records[offset]], TABLES_BY_NAME["loans"], ingested_at=INGESTED_AT)
        row = batch.rows.slice(landed.index(offset), 1).to_pylist()[0]
        expected = alone.rows.to_pylist()[0]
        row["after"] = {k: v for k, v in row["after"].items() if k in expected["after"]}
        assert row == expected


class _ConsumedMessage(NamedTuple):
    """What confluent-kafka's consume() hands the reader, as far as KafkaMessages reads it."""

    record: KafkaRecord

    def topic(self):
        return self.record.topic

    def partition(self):
        return self.record.partition

    def offset(self):
        return self.record.offset

    def key(self):
        return self.record.key

    def value(self):
        return self.record.value

    def timestamp(self):
        return (1, self.record.timestamp_ms)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.tuples(st.none(), GARBAGE), st.sampled_from(VALID)), max_size=16),
    st.lists(st.integers(1, 5), min_size=1, max_size=8),
)
def test_messages_held_without_heads_decode_as_the_records_do(mixed, chunk_sizes):
    """The reader's batches hold values without their schema text (with the crate); records, rows and dead
    letters (their original bytes) are the same as from the records as Kafka delivered them."""
    records = [KafkaRecord("servicing.public.loans", 0, offset, k, v, 7) for offset, (k, v) in enumerate(mixed)]
    messages, taken = KafkaMessages(), 0
    for size in chunk_sizes * len(records):  # consume() calls of different sizes
        if taken >= len(records):
            break
        messages.extend([_ConsumedMessage(r) for r in records[taken:taken + size]])
        taken += size

    assert list(messages) == records
    from_messages = decode_batch(messages, TABLES_BY_NAME["loans"], ingested_at=INGESTED_AT)
    from_records = decode_batch(records, TABLES_BY_NAME["loans"], ingested_at=INGESTED_AT)
    assert from_messages.rows.equals(from_records.rows)
    assert from_messages.dead_letters.equals(from_records.dead_letters)
    assert from_messages.new_columns == from_records.new_columns
    if messages.strip_heads and any(pair in VALID for pair in mixed):  # valid values are held without heads
        assert sum(len(v or b"") for v in messages.values) < sum(len(r.value or b"") for r in records)


@PROPERTY_SETTINGS
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=20))
def test_random_bytes_are_dead_letters(values):
    assume(not any(v.startswith(b"{") for v in values))  # anything else can never be an envelope
    records = [KafkaRecord("t", 1, i, None, v, 0) for i, v in enumerate(values)]
    batch = decode_batch(records, TABLES_BY_NAME["payments"], ingested_at=INGESTED_AT)
    assert batch.rows.num_rows == 0
    assert batch.dead_letters["value"].to_pylist() == values


@PROPERTY_SETTINGS
@given(st.lists(st.integers(-(10**38) + 1, 10**38 - 1), min_size=1, max_size=50))
def test_bulk_decimal_decoding_matches_python(unscaled):
    import base64

    from cardo_pipeline.cdc.decode_connect import unscaled_decimal128

    def encode(value: int) -> str:
        length = ((value if value >= 0 else ~value).bit_length() >> 3) + 1
        return base64.b64encode(value.to_bytes(length, "big", signed=True)).decode()

    decoded = unscaled_decimal128(pa.array([encode(v) for v in unscaled]))
    assert [int(d) for d in decoded.to_pylist()] == unscaled


@PROPERTY_SETTINGS
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES),
    st.integers(0, 9),
)
def test_zoned_timestamps_with_any_number_of_fraction_digits(moment, digits):
    from cardo_pipeline.cdc.decode_connect import parse_zoned_timestamp

    moment = moment.replace(
        microsecond=moment.microsecond // 10 ** max(0, 6 - digits) * 10 ** max(0, 6 - digits)
    )
    text = moment.replace(tzinfo=None, microsecond=0).isoformat()
    if digits:
        text += "." + f"{moment.microsecond:06d}{'000'}"[:digits]
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds() // 60)
    text += (
        "Z"
        if not minutes
        else f"{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    )
    expected = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert parse_zoned_timestamp(text) == expected


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(st.integers(0, 3), st.one_of(st.none(), st.sampled_from(VALID))), max_size=40),
       st.integers(0, 40))
def test_batches_know_their_next_offsets_and_the_bytes_they_hold(messages_by_partition, start):
    """next_offsets(start) is each partition's last offset + 1 among the messages from `start` on;
    held_bytes counts the keys and values as held (values without heads when the crate strips them)."""
    next_offset: dict[int, int] = {}
    records = []
    for partition, pair in messages_by_partition:
        key, value = pair if pair is not None else (None, None)
        offset = next_offset.get(partition, 0) + 3  # gaps, as compaction or transactions leave them
        next_offset[partition] = offset
        records.append(KafkaRecord("servicing.public.loans", partition, offset, key, value, 7))
    messages = KafkaMessages()
    messages.extend([_ConsumedMessage(r) for r in records])

    expected: dict[int, int] = {}
    for record in records[start:]:
        expected[record.partition] = record.offset + 1
    assert messages.next_offsets(start) == expected
    held = sum(len(k or b"") for k in messages.keys) + sum(len(v or b"") for v in messages.values)
    assert messages.held_bytes == held
