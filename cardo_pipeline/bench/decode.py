"""`cardo bench decode`: the batch decoder alone on realistic loans messages, as Debezium writes them.

Reports the best wall time and the least CPU time of a few rounds (shared machines steal wall time).
"""

from __future__ import annotations

import random
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from cardo_pipeline.cdc.decode import KafkaRecord, decode_batch
from cardo_pipeline.cdc.encode import EnvelopeEncoder
from cardo_pipeline.simulator.changes import RowChange, Transaction
from cardo_pipeline.tables import TABLES_BY_NAME


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
            change = RowChange("loans", "c", row)
        elif draw < 0.6:
            change = RowChange("loans", "u", row, frozenset({"days_past_due"}))
        elif draw < 0.9:
            change = RowChange("loans", "u", row, frozenset({"servicer_notes"}))
        else:
            change = RowChange("loans", "d", row)
        messages += encoder.encode_transaction(Transaction((change,), row["updated_at"]))
    return [
        KafkaRecord(m.topic, 0, i, m.key, m.value, 1_700_000_000_000 + i)
        for i, m in enumerate(messages[:count])
    ]


class Measurement(NamedTuple):
    events: int
    message_bytes: int
    seconds: float  # best wall time of the rounds
    cpu_seconds: float  # least CPU time of the rounds, all threads (shared machines steal wall time)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.message_bytes / self.seconds / 1e6

    @property
    def cpu_microseconds_per_event(self) -> float:
        return self.cpu_seconds / self.events * 1e6


def measure(records: list[KafkaRecord], rounds: int = 5) -> Measurement:
    table = TABLES_BY_NAME["loans"]
    best = best_cpu = float("inf")
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        batch = decode_batch(records, table, ingested_at=datetime.now(UTC))
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - started_cpu)
        assert batch.rows.num_rows == len(records) and batch.dead_letters.num_rows == 0
    size = sum(len(r.value or b"") + len(r.key or b"") for r in records)
    return Measurement(len(records), size, best, best_cpu)


def bench_decode(events: int, rounds: int = 5, long_notes: float = 0.7) -> dict:
    result = measure(loans_messages(events, long_notes=long_notes), rounds)
    return {
        "benchmark": "decode",
        "events": events,
        "mean_message_bytes": round(result.message_bytes / events),
        "decode_events_per_s": round(result.events_per_second),
        "decode_mb_per_s": round(result.megabytes_per_second),
        "cpu_us_per_event": round(result.cpu_microseconds_per_event, 2),
        "rounds": rounds,
    }
