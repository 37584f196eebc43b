"""A simulated book's SCD2 histories built in memory, without Postgres, Kafka or the lake: each row change becomes a
version with its position in commit order as its LSN, in the curated history's column names.

For what needs many loans fast (`cardo bench model`, the features' property tests). The graph builds the same
tables from the CDC stream; `test_pd_pipeline.py` shows both give the same features for the same book.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import polars as pl

from cardo_pipeline.simulator.book import Book
from cardo_pipeline.tables import TABLES_BY_NAME

LSN_STEP = 8  # LSNs grow by more than one per change in Postgres; nothing may assume they are consecutive
CHUNK_ROWS = 200_000  # rows kept as Python tuples before they become a polars frame (memory: tuples are large)


@dataclass
class SimulatedHistories:
    histories: dict[str, pl.LazyFrame]
    truth: pl.DataFrame  # loan_id, as_of_date, pd_12m
    changes: int


def _value(v: object) -> object:
    return float(v) if isinstance(v, Decimal) else v


def simulated_histories(*, loans: int, months: int, seed: int, start: date = date(2024, 1, 1),
                        tables: tuple[str, ...] = ("loans", "borrowers", "collaterals", "payments")
                        ) -> SimulatedHistories:
    book = Book(loans=loans, months=months, seed=seed, start=start)
    columns = {name: TABLES_BY_NAME[name].column_names for name in tables}
    for name in columns:  # notes are long and no feature reads them
        columns[name] = [c for c in columns[name] if c != "servicer_notes"]
    schemas = {}
    for name, cols in columns.items():
        schemas[name] = {c: _polars_type(TABLES_BY_NAME[name].column(c).pg_type) for c in cols} | {
            "valid_from_lsn": pl.Int64, "valid_from_offset": pl.Int64, "is_deleted": pl.Boolean}
    rows: dict[str, list[tuple]] = {name: [] for name in tables}
    frames: dict[str, list[pl.DataFrame]] = {name: [] for name in tables}
    lsn, changes = 0, 0
    truth: list[tuple[int, date, float]] = []
    for txn in book.transactions():
        for change in txn.changes:
            lsn += LSN_STEP
            changes += 1
            if change.table in rows:
                image = change.row
                pending = rows[change.table]
                if change.op == "d":  # as in the curated history: a delete's version holds the key only
                    key = TABLES_BY_NAME[change.table].primary_key
                    image = {c: image[c] for c in key}
                pending.append((*(_value(image.get(c)) for c in columns[change.table]), lsn, lsn, change.op == "d"))
                if len(pending) >= CHUNK_ROWS:
                    frames[change.table].append(pl.DataFrame(pending, schema=schemas[change.table], orient="row"))
                    pending.clear()
        if book.truth:
            truth += book.truth
            book.truth = []
    truth += book.truth
    histories = {}
    for name in columns:
        frames[name].append(pl.DataFrame(rows[name], schema=schemas[name], orient="row"))
        histories[name] = pl.concat(frames[name]).lazy()
    return SimulatedHistories(histories, pl.DataFrame(truth, schema={"loan_id": pl.Int64, "as_of_date": pl.Date,
                                                                     "pd_12m": pl.Float64}, orient="row"), changes)


def _polars_type(pg_type: str) -> pl.DataType:
    if pg_type in ("bigint",):
        return pl.Int64()
    if pg_type == "integer":
        return pl.Int32()
    if pg_type.startswith("numeric"):
        return pl.Float64()
    if pg_type == "date":
        return pl.Date()
    if pg_type == "timestamptz":
        return pl.Datetime("us", "UTC")
    return pl.String()
