"""The change model shared by the simulator and its sinks: row changes grouped in source transactions.

A `RowChange` carries everything a sink needs, whether it writes SQL (`PostgresSink`) or encodes Debezium
envelopes: the full row image, the operation and, for updates, the exact columns the UPDATE sets (an update
that does not set a TOASTed column makes Debezium emit its unchanged-TOAST placeholder for it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, Protocol

Op = Literal["c", "u", "d"]

# servicer_notes lengths come in two bands with a wide gap, so the TOAST status of a value is unambiguous:
# short values keep the loans row far below Postgres' ~2 kB TOAST threshold, long ones are always moved out of
# line (the column has STORAGE EXTERNAL).
SHORT_NOTE_MAX_BYTES = 300
LONG_NOTE_MIN_BYTES = 3000


def is_toasted_note(value: str | None) -> bool:
    """Whether a servicer_notes value is stored out of line (and so can arrive as Debezium's placeholder)."""
    return value is not None and len(value.encode("utf-8")) >= LONG_NOTE_MIN_BYTES


@dataclass(frozen=True)
class RowChange:
    table: str  # source table name: borrowers, loans, collaterals, payments
    op: Op  # c insert, u update, d delete
    row: dict[str, Any]  # c/u: the full row after the change; d: the full row before the deletion
    changed: frozenset[str] = frozenset()  # u only: the columns this UPDATE sets

    def is_toast_unchanged_update(self) -> bool:
        """A loan update leaving a TOASTed note alone: Debezium sends its placeholder for the note."""
        return (
            self.op == "u"
            and self.table == "loans"
            and "servicer_notes" not in self.changed
            and is_toasted_note(self.row.get("servicer_notes"))
        )


@dataclass(frozen=True)
class Transaction:
    changes: tuple[RowChange, ...]
    committed_at: datetime  # simulated commit time (UTC); also the updated_at of every row it writes


class ChangeSink(Protocol):
    def write(self, transactions: Iterable[Transaction]) -> int:
        """Apply the transactions in order; return the number of row changes written."""
        ...

    def write_truth(self, rows: Iterable[tuple[int, date, float]]) -> None:
        """Store (loan_id, as_of_date, pd_12m) ground-truth rows (upsert)."""
        ...
