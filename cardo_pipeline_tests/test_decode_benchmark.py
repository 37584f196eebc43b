"""Decoder micro-benchmark: realistic servicing messages, as Debezium writes them, decoded in batches.

Run it for numbers: `.venv/bin/python -m cardo_pipeline_tests.test_decode_benchmark [events [rounds [long]]]`
As a test (marked slow) it only guards against falling off a cliff, e.g. a change that decodes row by row:
shared machines are too noisy for a tight bound.
"""

from __future__ import annotations

import random
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

import pytest

from cardo_pipeline.cdc.decode import KafkaRecord, decode_batch
from cardo_pipeline.cdc.encode import EnvelopeEncoder
from cardo_pipeline.tables import TABLES_BY_NAME


class Change(NamedTuple):  # the RowChange / Transaction protocol the encoder reads
    table: str
    op: str
    row: dict
    changed: frozenset = frozenset()


class Transaction(NamedTuple):
    changes: tuple
    committed_at: datetime


def _notes(rnd: random.Random, long: bool) -> str:
    calls = 40 if long else 3  # 40 calls are about 3 kB: stored out of line, so TOASTed
    return " ".join(
        f"call {i}: borrower promised payment by day {i % 28 + 1}, ref {rnd.randrange(100003)}"
        for i in range(calls)
    )


def loans_messages(count: int, seed: int = 7, long_notes: float = 0.7) -> list[KafkaRecord]:
    """Loans changes: 30% inserts, 60% updates (half leave the notes TOASTed), 10% deletes with tombstones;
    a `long_notes` share of the notes is about 3 kB."""
    rnd = random.Random(seed)
    encoder = EnvelopeEncoder()
    start = datetime(2024, 3, 1, tzinfo=UTC)
    messages = []
    loan_id = 0
    while len(messages) < count:
        loan_id += 1
        row = {
            "loan_id": loan_id,
            "borrower_id": rnd.randrange(1, 10**6),
            "product": "mortgage",
            "currency": "EUR",
            "principal": Decimal(rnd.randrange(10**4, 10**9)) / 100,
            "interest_rate": Decimal(rnd.randrange(1, 10**5)) / 10**5,
            "term_months": 240,
            "origination_date": date(2024, 3, 1),
            "maturity_date": date(2044, 3, 1),
            "outstanding_principal": Decimal(rnd.randrange(10**4, 10**9)) / 100,
            "status": "active",
            "days_past_due": rnd.randrange(0, 120),
            "servicer_notes": _notes(rnd, rnd.random() < long_notes),
            "updated_at": start + timedelta(microseconds=rnd.randrange(10**12)),
        }
        draw = rnd.random()
        if draw < 0.3:
            change = Change("loans", "c", row)
        elif draw < 0.6:
            change = Change("loans", "u", row, frozenset({"days_past_due"}))
        elif draw < 0.9:
            change = Change("loans", "u", row, frozenset({"servicer_notes"}))
        else:
            change = Change("loans", "d", row)
        messages += encoder.encode_transaction(Transaction((change,), row["updated_at"]))
    return [
        KafkaRecord(m.topic, 0, i, m.key, m.value, 1_700_000_000_000 + i)
        for i, m in enumerate(messages[:count])
    ]


class Measurement(NamedTuple):
    events: int
    message_bytes: int
    seconds: float  # best of the rounds

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.message_bytes / self.seconds / 1e6


def measure(records: list[KafkaRecord], rounds: int = 5) -> Measurement:
    table = TABLES_BY_NAME["loans"]
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        batch = decode_batch(records, table, ingested_at=datetime.now(UTC))
        best = min(best, time.perf_counter() - started)
        assert batch.rows.num_rows == len(records) and batch.dead_letters.num_rows == 0
    size = sum(len(r.value or b"") + len(r.key or b"") for r in records)
    return Measurement(len(records), size, best)


@pytest.mark.slow
def test_decoding_stays_vectorised():
    result = measure(loans_messages(20_000), rounds=3)
    print(f"\ndecode: {result.events_per_second:,.0f} events/s, {result.megabytes_per_second:,.0f} MB/s")
    assert result.events_per_second > 20_000


if __name__ == "__main__":
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    records = loans_messages(events, long_notes=float(sys.argv[3]) if len(sys.argv) > 3 else 0.7)
    result = measure(records, rounds)
    print(
        f"{events:,} loans messages of {result.message_bytes / events:,.0f} bytes on average: "
        f"{result.events_per_second:,.0f} events/s, {result.megabytes_per_second:,.0f} MB/s "
        f"(best of {rounds})"
    )
