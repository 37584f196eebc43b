"""Helpers for raw-layer tests: produce Debezium envelopes to a test's own topics, read raw tables back."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from confluent_kafka import Producer
from deltalake import DeltaTable

from cardo_pipeline.cdc.encode import EnvelopeEncoder
from cardo_pipeline.ingest.audit import OffsetAudit, audit_topic_offsets
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable, load_table
from cardo_pipeline.ingest.raw_ingest import IngestReport, ingest_topic
from cardo_pipeline.simulator import simulate
from cardo_pipeline.simulator.changes import RowChange, Transaction
from cardo_pipeline.simulator.kafka_sink import KafkaEnvelopeSink
from cardo_pipeline.tables import SOURCE_TABLES, TABLES_BY_NAME, SourceTable


def fresh_prefix(name: str) -> str:
    return f"t{name}{uuid.uuid4().hex[:8]}"


def produce_book(bootstrap: str, prefix: str, *, loans: int, months: int, seed: int = 3) -> int:
    """Simulate a book straight into `<prefix>.public.*`; return the number of messages (tombstones included)."""
    with KafkaEnvelopeSink(bootstrap, prefix) as sink:
        summary = simulate(sink, loans=loans, months=months, seed=seed)
    return summary.total_changes + summary.deletes


def produce_raw(bootstrap: str, topic: str, values: list[bytes | None], key: bytes = b'{"loan_id":1}') -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    for value in values:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def encode_changes(table: SourceTable, prefix: str, rows: list[dict], op: str = "c") -> list[bytes]:
    encoder = EnvelopeEncoder(prefix, tables=[table])
    txn = Transaction(tuple(RowChange(table.name, op, row) for row in rows), datetime(2024, 5, 1, tzinfo=UTC))
    return [m.value for m in encoder.encode_transaction(txn) if m.value is not None]


def ingest_into(bootstrap: str, lake: Path, table: str, topic: str, batch: int = 50_000) -> IngestReport:
    return ingest_topic(
        bootstrap,
        TABLES_BY_NAME[table],
        topic,
        OffsetTrackedTable(f"{lake}/raw/{table}"),
        OffsetTrackedTable(f"{lake}/raw/_dead_letter"),
        max_batch_messages=batch,
    )


def loan_row(loan_id: int, **overrides) -> dict:
    row = {
        "loan_id": loan_id,
        "borrower_id": 7,
        "product": "auto",
        "currency": "EUR",
        "principal": Decimal("18000.00"),
        "interest_rate": Decimal("0.06500"),
        "term_months": 60,
        "origination_date": date(2024, 5, 1),
        "maturity_date": date(2029, 5, 1),
        "outstanding_principal": Decimal("18000.00"),
        "status": "active",
        "days_past_due": 0,
        "servicer_notes": None,
        "updated_at": datetime(2024, 5, 1, 9, tzinfo=UTC),
    }
    return row | overrides


def read_table(uri: str) -> pa.Table:
    table = load_table(uri)
    assert table is not None, f"no Delta table at {uri}"
    return table.to_pyarrow_table()


def audit_topic(lake: str, table: str, topic: str) -> tuple[OffsetAudit, int]:
    result = audit_topic_offsets(f"{lake}/raw/{table}", f"{lake}/raw/_dead_letter", topic)
    assert result is not None, f"no raw table for {table}"
    return result.audit, result.held


def delta_version(uri: str) -> int:
    return DeltaTable(uri).version()


__all__ = [
    "SOURCE_TABLES",
    "audit_topic",
    "delta_version",
    "encode_changes",
    "fresh_prefix",
    "ingest_into",
    "loan_row",
    "produce_book",
    "produce_raw",
    "read_table",
]
