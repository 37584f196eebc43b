"""`PostgresSink`: writes simulated transactions to the servicing database with psycopg 3.

One database transaction per simulator transaction: INSERT for c, `UPDATE ... SET <changed columns>` for u
(so an update that does not set servicer_notes leaves its TOASTed value alone and Debezium emits its
unchanged-TOAST placeholder), DELETE by primary key for d. Statements are prepared and sent in pipeline mode
(no round trip per statement or per commit); truth rows are upserted into simulator.loan_truth.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import date
from functools import cache
from types import TracebackType
from typing import Any

import psycopg

from cardo_pipeline.simulator.changes import RowChange, Transaction
from cardo_pipeline.tables import TABLES_BY_NAME

SOURCE_TABLES = ("borrowers", "loans", "collaterals", "payments")
TRUTH_TABLE = "simulator.loan_truth"
_UPSERT_TRUTH = (
    f"INSERT INTO {TRUTH_TABLE} (loan_id, as_of_date, pd_12m) VALUES (%s, %s, %s) "
    "ON CONFLICT (loan_id, as_of_date) DO UPDATE SET pd_12m = EXCLUDED.pd_12m"
)


class SimulatorSinkError(RuntimeError):
    """The servicing database cannot take the simulation (unreachable, schema missing, not empty)."""


@cache
def _statement(table: str, op: str, changed: frozenset[str]) -> tuple[str, tuple[str, ...]]:
    """SQL for one kind of change and the row keys its parameters come from, in order."""
    spec = TABLES_BY_NAME[table]
    key = spec.primary_key
    if op == "c":
        cols = tuple(spec.column_names)
        return (
            f"INSERT INTO public.{table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
            cols,
        )
    where = " AND ".join(f"{k} = %s" for k in key)
    if op == "d":
        return f"DELETE FROM public.{table} WHERE {where}", key
    if not changed:
        raise ValueError(f"an update of {table} must set at least one column")
    cols = tuple(c for c in spec.column_names if c in changed)  # table order, so the SQL text is stable
    unknown = changed - set(spec.column_names)
    if unknown or set(key) & changed:
        raise ValueError(f"cannot SET {sorted(unknown | (set(key) & changed))} on {table}")
    return f"UPDATE public.{table} SET {', '.join(f'{c} = %s' for c in cols)} WHERE {where}", cols + key


class PostgresSink:
    """Writes to a migrated servicing database; `reset=True` empties the tables first (the simulator's ids
    start at 1, so it cannot add to an existing book)."""

    def __init__(self, dsn: str, *, reset: bool = False) -> None:
        try:
            self.conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
            # No WAL flush at every commit (a third faster here); `write` makes its last commit synchronous.
            self.conn.execute("SET synchronous_commit = off")
        except psycopg.OperationalError as exc:
            raise SimulatorSinkError(
                f"cannot connect to the servicing database ({dsn}): {exc}. Is the local stack running? "
                "Run `cardo stack up` first."
            ) from exc
        try:
            self._check_schema()
            if reset:
                self.truncate()
            else:
                self._check_empty()
        except BaseException:
            self.conn.close()
            raise

    def _check_schema(self) -> None:
        wanted = [f"public.{t}" for t in SOURCE_TABLES] + [TRUTH_TABLE]
        row = self.conn.execute("SELECT array_agg(t) FROM unnest(%s::text[]) t WHERE to_regclass(t) IS NULL",
                                [wanted]).fetchone()  # fmt: skip
        missing = row[0] if row else None
        if missing:
            raise SimulatorSinkError(
                f"the servicing schema is missing ({', '.join(missing)} not found in database "
                f"{self.conn.info.dbname!r}): run `cardo stack up` first, which applies the migrations."
            )

    def _check_empty(self) -> None:
        union = " UNION ALL ".join(f"(SELECT '{t}' FROM public.{t} LIMIT 1)" for t in SOURCE_TABLES)
        non_empty = [r[0] for r in self.conn.execute(union).fetchall()]
        if non_empty:
            raise SimulatorSinkError(
                f"the servicing tables already hold rows ({', '.join(non_empty)}); the simulator numbers its "
                "rows from 1, so start from empty tables (reset=True truncates them)."
            )

    def truncate(self) -> None:
        tables = ", ".join([f"public.{t}" for t in SOURCE_TABLES] + [TRUTH_TABLE])
        self.conn.execute(f"TRUNCATE {tables}")

    def write(self, transactions: Iterable[Transaction]) -> int:
        written = 0
        pending = iter(transactions)
        txn = next(pending, None)
        try:
            # Explicit BEGIN/COMMIT in one pipeline: many transactions per network round trip.
            with self.conn.pipeline(), self.conn.cursor() as cur:
                while txn is not None:
                    following = next(pending, None)
                    cur.execute("BEGIN")
                    if following is None:
                        # The last commit is synchronous: it flushes the WAL of every commit before it, so all
                        # are durable and visible to logical decoding (Debezium) when `write` returns.
                        cur.execute("SET LOCAL synchronous_commit = on")
                    for sql, params in _batches(txn.changes):
                        cur.executemany(sql, params)
                        written += len(params)
                    cur.execute("COMMIT")
                    txn = following
        except psycopg.Error:
            # The failing transaction is left aborted (its COMMIT was skipped): end it, keep the error.
            if not self.conn.closed:
                self.conn.execute("ROLLBACK")
            raise
        return written

    def write_truth(self, rows: Iterable[tuple[int, date, float]]) -> None:
        with self.conn.pipeline(), self.conn.cursor() as cur:
            cur.executemany(_UPSERT_TRUTH, list(rows))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PostgresSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _batches(changes: Sequence[RowChange]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Runs of changes with the same statement (a payment schedule, say), for executemany; order is kept."""
    return [
        (sql, [tuple(c.row[k] for k in keys) for c in run])
        for (sql, keys), run in itertools.groupby(changes, key=lambda c: _statement(c.table, c.op, c.changed))
    ]
