"""Reconciliation of curated tables with the servicing database (`cardo_pipeline.quality.reconcile`).

Fast tests pin the canonical row text and the checksum's properties; the stack tests prove Postgres's SQL checksum
equals the lake's on every registry type, and run the real path Postgres -> Debezium -> Kafka -> raw -> curated
before reconciling (passed, failed, and each reason to skip).
"""

from __future__ import annotations

import hashlib
import random
import socket
import time
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import polars as pl
import psycopg
import pyarrow as pa
import pytest
from confluent_kafka import Producer
from deltalake import write_deltalake

from cardo_pipeline.cdc.arrow_types import arrow_type_for_column
from cardo_pipeline.cdc.encode import EnvelopeEncoder
from cardo_pipeline.curate.storage import CuratedLocations, CuratedStore
from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.quality.reconcile import (
    FAILED,
    PASSED,
    SKIPPED,
    Checksum,
    SourceSnapshot,
    canonical_row_sql,
    canonical_rows,
    checksum_sql,
    lake_checksum,
    parse_lsn,
    raw_changes_after_snapshot,
    reconcile_with_source,
    row_hashes,
    source_checksum,
)
from cardo_pipeline.simulator.changes import RowChange, Transaction
from cardo_pipeline.tables import SOURCE_TABLES, TABLES_BY_NAME, Column, SourceTable
from cardo_pipeline_tests.raw_helpers import fresh_prefix, ingest_into

LOANS, BORROWERS, PAYMENTS, COLLATERALS = (TABLES_BY_NAME[n] for n in ("loans", "borrowers", "payments",
                                                                       "collaterals"))
LONG_TEXT = " ".join(f"call {i}: promised payment | ref \\N {i * 7919 % 100003} è 😀" for i in range(120))


def lake_frame(table: SourceTable, rows: list[dict]) -> pl.DataFrame:
    """Rows with the lake's types (those raw and curated tables hold)."""
    schema = pa.schema([pa.field(c.name, arrow_type_for_column(c)) for c in table.columns])
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=schema))


def loan(loan_id: int, **overrides) -> dict:
    return {"loan_id": loan_id, "borrower_id": 7, "product": "auto", "currency": "EUR",
            "principal": Decimal("18000.00"), "interest_rate": Decimal("0.06500"), "term_months": 60,
            "origination_date": date(2024, 5, 1), "maturity_date": date(2029, 5, 1),
            "outstanding_principal": Decimal("17000.10"), "status": "active", "days_past_due": 0,
            "servicer_notes": None, "updated_at": datetime(2024, 5, 1, 9, 0, 0, 123456, tzinfo=UTC)} | overrides


def payment(payment_id: int, **overrides) -> dict:
    return {"payment_id": payment_id, "loan_id": 3, "due_date": date(2024, 6, 1), "amount_due": Decimal("310.25"),
            "paid_date": None, "amount_paid": Decimal("0.00"), "status": "scheduled",
            "updated_at": datetime(2024, 6, 1, tzinfo=UTC)} | overrides


def collateral(collateral_id: int, **overrides) -> dict:
    return {"collateral_id": collateral_id, "loan_id": 11, "collateral_type": "vehicle",
            "appraised_value": Decimal("21000.00"), "appraisal_date": date(2024, 4, 2), "postcode": "28013",
            "country_code": "ES", "updated_at": datetime(2024, 4, 2, 8, 30, tzinfo=UTC)} | overrides


def borrower(borrower_id: int, **overrides) -> dict:
    return {"borrower_id": borrower_id, "borrower_type": "individual", "full_name": "Ana Sousa",
            "birth_date": date(1980, 2, 29), "annual_income": Decimal("42000.00"), "employment_status": "employed",
            "postcode": "1000-001", "country_code": "PT", "created_at": datetime(2020, 1, 1, tzinfo=UTC),
            "updated_at": datetime(2024, 1, 1, tzinfo=UTC)} | overrides


# --- canonical text and checksum, no services ---------------------------------------------------------------------

def test_canonical_text_of_each_type() -> None:
    frame = lake_frame(LOANS, [loan(5, principal=Decimal("-0.5"), interest_rate=Decimal("0"),
                                    servicer_notes="a|b:c", currency="EU ",
                                    updated_at=datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))])
    assert canonical_rows(frame, LOANS).to_list() == [
        "5|7|4:auto|2:EU|-0.50|0.00000|60|2024-05-01|2029-05-01|17000.10|6:active|0|5:a|b:c|-1"]
    frame = lake_frame(PAYMENTS, [payment(9, due_date=date(1, 1, 1), amount_due=Decimal("-1234567.89"))])
    assert canonical_rows(frame, PAYMENTS).to_list() == [
        f"9|3|0001-01-01|-1234567.89|\\N|0.00|9:scheduled|{int(datetime(2024, 6, 1, tzinfo=UTC).timestamp()) * 10**6}"]


def test_the_row_hash_is_the_first_60_bits_of_md5_as_postgres_reads_them() -> None:
    texts = ["", "5|7|4:auto", "è 😀 " * 100]
    expected = [int(hashlib.md5(t.encode()).hexdigest()[:15], 16) for t in texts]  # ('x'||substr(md5,1,15))::bit(60)
    assert row_hashes(pl.Series(texts)).tolist() == expected


def test_the_same_instant_in_any_zone_or_unit_is_the_same_text() -> None:
    moment = datetime(2024, 3, 31, 1, 30, 0, 654321, tzinfo=UTC)
    base = canonical_rows(lake_frame(LOANS, [loan(1, updated_at=moment)]), LOANS)
    for dtype in (pl.Datetime("ns", "UTC"), pl.Datetime("us", "Europe/Rome"), pl.Datetime("us", "Asia/Kathmandu")):
        other = lake_frame(LOANS, [loan(1, updated_at=moment)]).with_columns(pl.col("updated_at").cast(dtype))
        assert canonical_rows(other, LOANS).equals(base)


def test_char_columns_compare_without_trailing_blanks() -> None:
    # Postgres's char(n)::text drops trailing blanks; Debezium sends the padded value
    padded, trimmed = (lake_frame(BORROWERS, [borrower(1, country_code=code)]) for code in ("I ", "I"))
    assert lake_checksum(BORROWERS, padded) == lake_checksum(BORROWERS, trimmed)
    # but text columns keep them, and leading blanks count everywhere
    spaced, plain = (lake_frame(BORROWERS, [borrower(1, postcode=code)]) for code in ("1000 ", "1000"))
    assert lake_checksum(BORROWERS, spaced) != lake_checksum(BORROWERS, plain)
    assert lake_checksum(BORROWERS, lake_frame(BORROWERS, [borrower(1, country_code=" I")])) != \
        lake_checksum(BORROWERS, trimmed)


def _random_payments(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [payment(i, loan_id=rng.randrange(1, 50), amount_due=Decimal(rng.randrange(-10**6, 10**6)) / 100,
                    paid_date=rng.choice([None, date(2024, 7, rng.randrange(1, 29))]),
                    amount_paid=Decimal(rng.randrange(0, 10**5)) / 100, status=rng.choice(["paid", "late", ""]),
                    updated_at=datetime(2024, 7, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**12)))
            for i in range(n)]


def test_checksum_is_independent_of_row_order_and_chunking() -> None:
    frame = lake_frame(PAYMENTS, _random_payments(5000, seed=1))
    whole = lake_checksum(PAYMENTS, frame)
    assert whole.rows == 5000
    assert lake_checksum(PAYMENTS, frame.sample(fraction=1.0, shuffle=True, seed=4)) == whole
    assert lake_checksum(PAYMENTS, frame.iter_slices(777)) == whole
    assert lake_checksum(PAYMENTS, [frame.head(0), frame]) == whole
    assert lake_checksum(PAYMENTS, frame.head(0)) == Checksum(0, 0)


def test_checksum_changes_when_any_one_value_changes() -> None:
    rows = _random_payments(200, seed=2)
    whole = lake_checksum(PAYMENTS, lake_frame(PAYMENTS, rows))
    changes = {"payment_id": 10_000, "loan_id": 999, "due_date": date(2024, 6, 2), "amount_due": Decimal("0.01"),
               "paid_date": date(2030, 1, 1), "amount_paid": Decimal("-0.01"), "status": "missed",
               "updated_at": datetime(2000, 1, 1, tzinfo=UTC)}
    assert set(changes) == set(PAYMENTS.column_names)
    for name, value in changes.items():
        changed = [dict(r) for r in rows]
        changed[17][name] = value
        other = lake_checksum(PAYMENTS, lake_frame(PAYMENTS, changed))
        assert other.rows == whole.rows and other.total != whole.total, name
    # moving a value to another row (same multiset of values per column) changes it too
    swapped = [dict(r) for r in rows]
    swapped[3]["amount_due"], swapped[4]["amount_due"] = rows[4]["amount_due"], rows[3]["amount_due"]
    assert rows[3]["amount_due"] != rows[4]["amount_due"]
    assert lake_checksum(PAYMENTS, lake_frame(PAYMENTS, swapped)) != whole


def test_nulls_empty_strings_and_look_alikes_are_distinct() -> None:
    texts = [None, "", "\\N", "0:", "1:|", "|"]
    sums = {lake_checksum(LOANS, lake_frame(LOANS, [loan(1, servicer_notes=t)])).total for t in texts}
    assert len(sums) == len(texts)
    # a separator inside text cannot move a field boundary: the length prefix pins it
    a = lake_frame(BORROWERS, [borrower(1, full_name="x|8:employed", employment_status="y")])
    b = lake_frame(BORROWERS, [borrower(1, full_name="x", employment_status="employed|1:y")])
    assert canonical_rows(a, BORROWERS).item() != canonical_rows(b, BORROWERS).item()
    assert lake_checksum(PAYMENTS, lake_frame(PAYMENTS, [payment(1, paid_date=None)])) != \
        lake_checksum(PAYMENTS, lake_frame(PAYMENTS, [payment(1, paid_date=date(1970, 1, 1))]))


def test_decimals_print_their_scale_including_negatives_and_zero() -> None:
    values = [Decimal("0"), Decimal("-0.00"), Decimal("-0.5"), Decimal("-12345678901.23"), Decimal("7")]
    frame = lake_frame(PAYMENTS, [payment(i, amount_due=v) for i, v in enumerate(values)])
    texts = [t.split("|")[3] for t in canonical_rows(frame, PAYMENTS).to_list()]
    assert texts == ["0.00", "0.00", "-0.50", "-12345678901.23", "7.00"]
    # a lake column of another precision or scale holds the same values: the same text
    wider = frame.with_columns(pl.col("amount_due").cast(pl.Decimal(20, 4)))
    assert canonical_rows(wider, PAYMENTS).equals(canonical_rows(frame, PAYMENTS))


def test_types_without_a_canonical_form_are_refused() -> None:
    table = SourceTable("odd", ("id",), (Column("id", "bigint"), Column("score", "double precision")), "")
    with pytest.raises(ValueError, match="score"):
        checksum_sql(table)
    with pytest.raises(ValueError, match="score"):
        canonical_rows(pl.DataFrame({"id": [1], "score": [0.1]}), table)


def test_the_sql_reads_only_the_registry_columns_of_the_table() -> None:
    sql = checksum_sql(COLLATERALS)
    assert sql.endswith('FROM "public"."collaterals"')
    assert all(f'"{name}"' in canonical_row_sql(COLLATERALS) for name in COLLATERALS.column_names)
    assert "extract(epoch from" in sql and "to_char(" in sql  # no dependence on TimeZone or DateStyle


def test_lsn_text_is_the_integer_debezium_writes() -> None:
    assert parse_lsn("0/1943D50") == 0x1943D50
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848


def _raw(path: Path, rows: list[tuple[int | None, int | None]]) -> str:
    uri = str(path)
    lsns, txs = zip(*rows, strict=True)
    write_deltalake(uri, pa.table({"source_lsn": pa.array(lsns, pa.int64()), "source_tx_id": pa.array(txs, pa.int64()),
                                   "op": pa.array(["c"] * len(rows))}))
    return uri


def test_raw_changes_after_the_snapshot_by_lsn_or_by_transaction(tmp_path: Path) -> None:
    snapshot = SourceSnapshot(lsn=1000, xmin=500, xmax=510, running=frozenset({505}), restart_lsn=900)
    seen = [(100, 3), (950, 504), (960, 509), (None, None), (1000, 499)]
    assert raw_changes_after_snapshot(_raw(tmp_path / "a", seen), snapshot) == (1000, None)
    max_lsn, why = raw_changes_after_snapshot(_raw(tmp_path / "b", [*seen, (1001, 400)]), snapshot)
    assert max_lsn == 1001 and "beyond the snapshot" in why
    # a transaction running at the snapshot that committed later, with every change before the snapshot's LSN
    assert "transaction 505" in raw_changes_after_snapshot(_raw(tmp_path / "c", [*seen, (990, 505)]), snapshot)[1]
    assert "transaction 512" in raw_changes_after_snapshot(_raw(tmp_path / "d", [*seen, (990, 512)]), snapshot)[1]
    # below the slot's restart LSN no change can be of such a transaction (an id from long ago, wrapped around)
    assert raw_changes_after_snapshot(_raw(tmp_path / "e", [*seen, (899, 505)]), snapshot) == (1000, None)


def test_32_bit_transaction_ids_across_the_wraparound() -> None:
    xmax = (3 << 32) + 10  # epoch 3
    snapshot = SourceSnapshot(lsn=0, xmin=xmax - 20, xmax=xmax, running=frozenset({(3 << 32) + 2}), restart_lsn=0)
    assert snapshot.sees(9) and snapshot.sees(2**32 - 5)  # just before xmax, in this epoch and the one before
    assert not snapshot.sees(10) and not snapshot.sees(11) and not snapshot.sees(2)  # future, future, running
    assert snapshot.sees((3 << 32) + 9) and not snapshot.sees((3 << 32) + 10)  # 64-bit ids are taken as they are


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_reachable_source_is_skipped_with_the_reason(tmp_path: Path) -> None:
    result = reconcile_with_source(
        COLLATERALS, conninfo=f"host=127.0.0.1 port={_closed_port()} dbname=servicing user=cardo",
        curated_uri=str(tmp_path / "curated"), raw_uri=str(tmp_path / "raw"), topic=COLLATERALS.topic(),
        bootstrap="127.0.0.1:1")
    assert result.status == SKIPPED and not result.passed
    assert "not reachable" in result.reason and "refused" in result.reason
    assert result.source_rows is None and result.lake_checksum is None


# --- against the real stack ---------------------------------------------------------------------------------------

EDGE_ROWS: dict[str, list[dict]] = {
    "borrowers": [
        borrower(981001, borrower_type="sme", full_name="Müller | \\N 12:x 😀", birth_date=None,
                 annual_income=Decimal("-1234.50"), employment_status="", country_code="I",
                 created_at=datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        borrower(981002, birth_date=date(1, 1, 1), annual_income=Decimal("0.00"),
                 created_at=datetime(2024, 2, 29, 23, 59, 59, 1, tzinfo=timezone(timedelta(hours=5, minutes=45)))),
    ],
    "loans": [
        loan(981001, principal=Decimal("-999999999999.99"), interest_rate=Decimal("-0.00001"),
             servicer_notes=LONG_TEXT, term_months=-1, days_past_due=2**31 - 1, currency="E"),
        loan(981002, principal=Decimal("0"), interest_rate=Decimal("99.99999"), servicer_notes="",
             borrower_id=-(2**63)),
    ],
    "collaterals": [
        collateral(981001, appraised_value=Decimal("-0.01"), postcode="|", appraisal_date=date(9999, 12, 31)),
        collateral(981002, appraised_value=Decimal("0.00"), postcode="\t\n", country_code="  "),
    ],
    "payments": [
        payment(981001, paid_date=None, amount_paid=Decimal("-310.25"), status="late"),
        payment(981002, paid_date=date(1900, 2, 28), amount_due=Decimal("0.00"), status="paid"),
    ],
}


def _insert(conn: psycopg.Connection, table: SourceTable, rows: list[dict]) -> None:
    names = table.column_names
    sql = f"INSERT INTO public.{table.name} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"
    with conn.cursor() as cur:
        cur.executemany(sql, [tuple(row[n] for n in names) for row in rows])


def _delete_range(conn: psycopg.Connection, table: SourceTable, low: int, high: int) -> None:
    (key,) = table.primary_key
    conn.execute(f"DELETE FROM public.{table.name} WHERE {key} BETWEEN %s AND %s", (low, high))


def _read_as_lake(conn: psycopg.Connection, table: SourceTable) -> pl.DataFrame:
    """Every row of the Postgres table, in a frame with the lake's types (char(n) blank-padded, as Debezium
    sends them)."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(f"SELECT {', '.join(table.column_names)} FROM public.{table.name}").fetchall()
    return lake_frame(table, rows)


@pytest.mark.stack
def test_postgres_checksum_equals_the_lake_checksum_of_the_same_rows(servicing_dsn: str) -> None:
    with psycopg.connect(servicing_dsn, autocommit=True) as conn:
        for table in SOURCE_TABLES:
            _delete_range(conn, table, 981000, 981999)
            _insert(conn, table, EDGE_ROWS[table.name])
        try:
            with psycopg.connect(servicing_dsn, autocommit=True) as odd:
                # the session's zone and date style must not matter
                odd.execute("SET TIME ZONE 'Asia/Kathmandu'")
                odd.execute("SET DateStyle = 'SQL, DMY'")
                for table in SOURCE_TABLES:
                    frame = _read_as_lake(conn, table)
                    assert frame.height >= len(EDGE_ROWS[table.name])
                    in_postgres = sorted(r[0] for r in odd.execute(
                        f"SELECT {canonical_row_sql(table)} FROM public.{table.name}").fetchall())
                    assert sorted(canonical_rows(frame, table).to_list()) == in_postgres, table.name
                    source = source_checksum(odd, table)
                    assert source.rows == frame.height
                    assert lake_checksum(table, frame) == source, table.name
                    assert lake_checksum(table, frame.iter_slices(3)) == source, table.name
        finally:
            for table in SOURCE_TABLES:
                _delete_range(conn, table, 981000, 981999)


def _wait_captured(conn: psycopg.Connection, slot: str = "cardo_servicing", timeout_s: float = 30.0) -> float:
    """Seconds until Debezium's slot confirms everything written so far (then Kafka holds it)."""
    (target,) = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    started = time.monotonic()
    while True:
        (confirmed,) = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                                    (slot,)).fetchone()
        if parse_lsn(confirmed) >= parse_lsn(target):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout_s, f"slot {slot} still at {confirmed}, waiting for {target}"
        time.sleep(0.1)


def _messages_in(bootstrap: str, topic: str) -> int:
    try:
        return sum(end_offsets(bootstrap, [topic]).get(topic, {}).values())
    except Exception:  # the topic is not there yet
        return 0


def _produce(bootstrap: str, topic: str, messages) -> None:
    """Produce, then wait until the end offsets show every message: a topic created by the first produce can
    report no partitions to the next reader for a moment, which then lands nothing (seen in CI)."""
    messages = list(messages)
    expected = _messages_in(bootstrap, topic) + len(messages)
    producer = Producer({"bootstrap.servers": bootstrap})
    for message in messages:
        producer.produce(topic, key=message.key, value=message.value)
    assert producer.flush(30) == 0
    deadline = time.monotonic() + 30
    while _messages_in(bootstrap, topic) < expected:
        assert time.monotonic() < deadline, f"{topic} does not show the {len(messages)} messages produced"
        time.sleep(0.2)


@pytest.mark.stack
def test_reconcile_through_debezium_kafka_raw_and_curated(servicing_dsn: str, kafka_bootstrap: str,
                                                          tmp_path: Path) -> None:
    table, topic, lake = COLLATERALS, COLLATERALS.topic(), tmp_path / "lake"
    locations = CuratedLocations.in_lake(str(lake), table)

    def reconcile(**overrides):
        arguments = {"conninfo": servicing_dsn, "curated_uri": locations.current, "raw_uri": locations.raw,
                     "topic": topic, "bootstrap": kafka_bootstrap, "wait_s": 20.0} | overrides
        return reconcile_with_source(table, **arguments)

    def land(from_topic: str = topic) -> int:
        return ingest_into(kafka_bootstrap, lake, table.name, from_topic).landed

    def apply() -> None:
        CuratedStore(table, locations).apply()

    with psycopg.connect(servicing_dsn, autocommit=True) as conn:
        _delete_range(conn, table, 982000, 982999)
        try:
            # the real path: inserts, an update and a delete, captured by Debezium, landed in raw, applied
            _insert(conn, table, [collateral(i, appraised_value=Decimal(i - 982010) * Decimal("1.01"),
                                             postcode=f"{i % 97:05d}") for i in range(982001, 982021)])
            conn.execute("UPDATE collaterals SET appraised_value = -5.50 WHERE collateral_id = 982002")
            conn.execute("DELETE FROM collaterals WHERE collateral_id = 982003")
            captured_s = _wait_captured(conn)
            land()
            result = reconcile()
            assert result.status == SKIPPED and "apply first" in result.reason, result
            apply()
            result = reconcile()
            assert result.status == PASSED, result
            assert result.source_rows == result.lake_rows >= 19
            assert result.source_checksum == result.lake_checksum
            assert result.details["slot_lag_bytes"] == 0
            assert result.details["kafka_end_offsets"] == result.details["raw_offsets"]
            print(f"\ncaptured in {captured_s:.2f} s; passed: {result.reason}; details {result.details}")

            # an idle database: the slot still confirms the snapshot (Debezium's heartbeats)
            time.sleep(3)
            idle = reconcile()
            assert idle.status == PASSED, idle
            print(f"idle database: the slot confirmed the snapshot after {idle.details['slot_wait_s']} s")

            # raw behind Kafka
            _insert(conn, table, [collateral(982100)])
            _wait_captured(conn)
            result = reconcile()
            assert result.status == SKIPPED, result
            assert "raw is 1 messages behind Kafka" in result.reason and "ingest first" in result.reason
            land()
            apply()
            assert reconcile().status == PASSED

            # wrong slot: Debezium is not capturing there
            result = reconcile(slot_name="no_such_slot")
            assert result.status == SKIPPED and "no replication slot 'no_such_slot'" in result.reason

            # a row the source never had, produced straight to Kafka (a topic of its own, landing in the same raw
            # table, so the shared Debezium topic stays clean), with an LSN and transaction the snapshot has seen
            side = f"{fresh_prefix('reconcile')}.public.{table.name}"
            # (its LSN after every event raw holds: the topic may carry truncates of earlier tests in the session,
            # and an event older than a truncate is dead in curated)
            newest = pl.scan_delta(locations.raw).select(pl.col("source_lsn").max()).collect().item()
            encoder = EnvelopeEncoder(tables=[table], start_lsn=newest + 1, start_tx_id=3)
            ghost = collateral(982999)
            _produce(kafka_bootstrap, side, encoder.encode_transaction(
                Transaction((RowChange(table.name, "c", ghost),), datetime(2024, 5, 1, tzinfo=UTC))))
            assert land(side) == 1
            apply()
            result = reconcile()
            assert result.status == FAILED, result
            assert result.lake_rows == result.source_rows + 1
            assert "row counts differ" in result.reason

            # the ghost deleted, and one real row's value changed behind the source's back (an LSN after every
            # event raw holds, the ghost's included, so both win in curated): same count, different checksum
            real_lsn = pl.scan_delta(locations.raw).select(pl.col("source_lsn").max()).collect().item()
            forged = EnvelopeEncoder(tables=[table], start_lsn=real_lsn + 1, start_tx_id=4)
            messages = forged.encode_transaction(Transaction(
                (RowChange(table.name, "d", ghost),
                 RowChange(table.name, "u", collateral(982004, appraised_value=Decimal("1.00"), postcode="00000"),
                           frozenset({"appraised_value"}))),
                datetime(2024, 5, 2, tzinfo=UTC)))
            _produce(kafka_bootstrap, side, messages)
            land(side)
            apply()
            result = reconcile()
            assert result.status == FAILED, result
            assert result.lake_rows == result.source_rows
            assert result.source_checksum != result.lake_checksum
            assert "checksums differ" in result.reason

            # a change from after the source snapshot: no verdict, skipped until rerun
            late = EnvelopeEncoder(tables=[table], start_lsn=1 << 62, start_tx_id=5)
            _produce(kafka_bootstrap, side, late.encode_transaction(
                Transaction((RowChange(table.name, "c", collateral(982998)),), datetime(2024, 5, 3, tzinfo=UTC))))
            land(side)
            apply()
            result = reconcile()
            assert result.status == SKIPPED, result
            assert "changes made after the source snapshot" in result.reason and "rerun" in result.reason
        finally:
            _delete_range(conn, table, 982000, 982999)
