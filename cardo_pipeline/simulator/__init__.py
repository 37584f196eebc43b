"""The servicing simulator: a deterministic (per seed) loan-servicing book that emits row changes in realistic
transactions to a pluggable sink, plus each loan's true 12-month default probability.

Modules: `changes` (the change model and the sink protocol), `book` (the event-driven book), `model` (hidden
risk, the delinquency Markov chain and exact PDs), `geo` (postcodes with NUTS3, regional risk, names), `notes`
(servicer notes text), `postgres_sink` (writes to the servicing database).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from cardo_pipeline.simulator.book import Book
from cardo_pipeline.simulator.changes import ChangeSink, RowChange, Transaction

__all__ = ["ChangeSink", "RowChange", "SimulationSummary", "Transaction", "simulate"]

CHUNK_TRANSACTIONS = 1_000  # transactions handed to the sink at a time: bounds memory, amortises round trips


@dataclass
class SimulationSummary:
    loans: int
    months: int
    seed: int
    start: date
    transactions: int = 0
    changes: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> op -> count
    originations: int = 0
    defaults: int = 0
    prepayments: int = 0
    maturities: int = 0
    write_offs: int = 0
    cures: int = 0
    corrections: int = 0
    duplicates: int = 0
    deletes: int = 0
    note_edits: int = 0
    toast_unchanged_updates: int = 0  # loan updates leaving a TOASTed servicer_notes untouched
    truth_rows: int = 0
    written: int = 0  # row changes the sink reports as written

    @property
    def total_changes(self) -> int:
        return sum(n for ops in self.changes.values() for n in ops.values())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"start": self.start.isoformat(), "total_changes": self.total_changes}


def simulate(
    sink: ChangeSink, *, loans: int, months: int, seed: int, start: date = date(2024, 1, 1)
) -> SimulationSummary:
    """Simulate `loans` originations spread over `months` months from `start`, streaming into `sink`."""
    book = Book(loans=loans, months=months, seed=seed, start=start)
    summary = SimulationSummary(loans=loans, months=months, seed=seed, start=start)
    ops: Counter[tuple[str, str]] = Counter()
    stream = book.transactions()
    while chunk := list(itertools.islice(stream, CHUNK_TRANSACTIONS)):
        for txn in chunk:
            for change in txn.changes:
                ops[change.table, change.op] += 1
                summary.toast_unchanged_updates += change.is_toast_unchanged_update()
        summary.transactions += len(chunk)
        summary.written += sink.write(chunk)
        if book.truth:
            sink.write_truth(book.truth)
            book.truth = []
    if book.truth:  # year-end truth after the last transaction
        sink.write_truth(book.truth)
        book.truth = []
    for (table, op), n in sorted(ops.items()):
        summary.changes.setdefault(table, {})[op] = n
    summary.deletes = sum(n for (_, op), n in ops.items() if op == "d")
    for name, value in asdict(book.counters).items():
        setattr(summary, name, value)
    return summary
