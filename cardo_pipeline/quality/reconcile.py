"""Reconciliation of a curated table with the servicing database: same row count and same order-independent
checksum over the registry columns, compared only when the comparison means something.

What belongs here: the canonical text of a row (identical in Postgres SQL and in polars), the checksum built on it
(`lake_checksum`, `checksum_sql`), and `reconcile_with_source`, which decides whether the lake has caught up with
one Postgres snapshot and then compares the two sides. No Dagster here: the asset check that runs it lives in
`cardo_pipeline/defs/quality/`.

The checksum: each row's canonical text (registry column order, fields joined by `|`, nulls as `\\N`) is hashed
with MD5 (of its UTF-8 bytes); the first 60 bits of the digest are a non-negative integer that fits a bigint; the
table's checksum is the row count and the exact sum of those integers. A sum does not depend on row order, so
Postgres computes it in one aggregate (no rows leave the server) and the lake in streamed chunks. 60 bits and not
64: `bit(60)::bigint` is never negative, so both sides sum plain non-negative integers.

Canonical forms (a function of the Postgres type, so the lake's Arrow types only need to hold the same values):
- integers and booleans: their text (`-5`, `true`);
- numeric(p,s): text with exactly s decimals (`-0.50`, `0.00`), as `numeric::text` prints a numeric(p,s) column;
- date: `YYYY-MM-DD` (`to_char`, so the session's DateStyle does not matter);
- timestamp(tz): integer microseconds since the epoch (`extract(epoch ...)`, independent of the session TimeZone);
- text, varchar, char(n), uuid: `<length in characters>:<text>`, char(n) without its trailing blanks (as
  `char(n)::text` gives it; Debezium sends the padded value). The length prefix keeps the row text unambiguous
  although text may hold `|` or `\\N` (Postgres text cannot hold NUL, the one byte that could not occur).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import methodcaller

import numpy as np
import polars as pl
import psycopg
import pyarrow as pa

from cardo_pipeline.cdc.arrow_types import arrow_type_for_column
from cardo_pipeline.curate.storage import RAW_VERSION_APP_ID
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable, load_table
from cardo_pipeline.kafka_topics import KafkaUnavailable, end_offsets
from cardo_pipeline.tables import Column, SourceTable

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
SEPARATOR = "|"
NULL_MARKER = "\\N"
HASH_BITS = 60
SLOT_POLL_S = 0.5
CONNECT_TIMEOUT_S = 5  # libpq takes whole seconds (and at least 2)

# Arrow maps json, xml and citext to strings too, but their text forms differ between Postgres and the lake
_BLANK_PADDED = re.compile(r"(?:char|character|bpchar)(?:\s*\(\d+\))?")
_TEXT = re.compile(r"text|uuid|(?:varchar|character varying)(?:\s*\(\d+\))?")


# --- canonical row text -------------------------------------------------------------------------------------------

def _kind(column: Column) -> str:
    """The canonical form of a column, from the Arrow type the lake stores it as (`arrow_type_for_column`, the one
    reading of Postgres types), and for strings from the Postgres type (char(n) is blank-padded)."""
    try:
        arrow = arrow_type_for_column(column)
    except ValueError:
        arrow = None
    if arrow is not None:
        for kind, is_kind in (("integer", pa.types.is_integer), ("numeric", pa.types.is_decimal),
                              ("boolean", pa.types.is_boolean), ("date", pa.types.is_date),
                              ("timestamp", pa.types.is_timestamp)):
            if is_kind(arrow):
                return kind
        pg_type = column.pg_type.strip().lower()
        if pa.types.is_string(arrow) and _BLANK_PADDED.fullmatch(pg_type):
            return "char"
        if pa.types.is_string(arrow) and _TEXT.fullmatch(pg_type):
            return "text"
    # floats, times, bytea, json: their text forms differ between Postgres and the lake; add one when needed
    raise ValueError(f"column {column.name}: no canonical form for Postgres type {column.pg_type!r} yet")


def _scale(column: Column) -> int:
    return arrow_type_for_column(column).scale


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _field_sql(column: Column) -> str:
    col = _quote_ident(column.name)
    kind = _kind(column)
    if kind in ("integer", "numeric", "boolean"):
        text = f"{col}::text"
    elif kind == "date":
        text = f"to_char({col}, 'YYYY-MM-DD')"
    elif kind == "timestamp":
        text = f"(extract(epoch from {col}) * 1000000)::bigint::text"  # numeric since Postgres 14: exact
    else:
        text = f"length({col}::text)::text || ':' || {col}::text"
    return f"coalesce({text}, E'\\\\N')"


def canonical_row_sql(table: SourceTable) -> str:
    """The SQL expression of a row's canonical text (over the registry columns of `table`)."""
    return f" || '{SEPARATOR}' || ".join(_field_sql(c) for c in table.columns)


def checksum_sql(table: SourceTable, schema: str = "public") -> str:
    """One row: (row count, checksum as numeric) of `<schema>.<table>`, computed in Postgres."""
    row_hash = (f"('x' || substr(md5(convert_to({canonical_row_sql(table)}, 'UTF8')), 1, {HASH_BITS // 4}))"
                f"::bit({HASH_BITS})::bigint")
    return (f"SELECT count(*), coalesce(sum({row_hash}), 0) "
            f"FROM {_quote_ident(schema)}.{_quote_ident(table.name)}")


def _field_expr(column: Column) -> pl.Expr:
    col, kind = pl.col(column.name), _kind(column)
    if kind == "integer":
        text = col.cast(pl.Int64).cast(pl.String)
    elif kind == "numeric":
        text = col.cast(pl.Decimal(38, _scale(column))).cast(pl.String)  # prints exactly `scale` decimals
    elif kind == "boolean":
        text = col.cast(pl.Boolean).cast(pl.String)
    elif kind == "date":
        text = col.cast(pl.Date).cast(pl.String)  # ISO, zero-padded years, as to_char's YYYY-MM-DD
    elif kind == "timestamp":
        text = col.dt.epoch("us").cast(pl.String)  # any unit or zone: the same instant
    else:
        value = col.cast(pl.String)
        if kind == "char":
            value = value.str.strip_chars_end(" ")
        text = pl.concat_str([value.str.len_chars().cast(pl.String), pl.lit(":"), value])
    return text.fill_null(NULL_MARKER)


def canonical_rows(frame: pl.DataFrame, table: SourceTable) -> pl.Series:
    """Each row's canonical text (the same text `canonical_row_sql` gives in Postgres), vectorised in polars."""
    exprs = [_field_expr(c) for c in table.columns]
    return frame.select(pl.concat_str(exprs, separator=SEPARATOR).alias("canonical")).to_series()


# --- checksums ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checksum:
    """Row count and the exact sum of the rows' 60-bit hashes: equal multisets of rows give equal checksums."""

    rows: int = 0
    total: int = 0

    def __add__(self, other: Checksum) -> Checksum:
        return Checksum(self.rows + other.rows, self.total + other.total)

    def __str__(self) -> str:
        return str(self.total)


_DIGEST = methodcaller("digest")


def row_hashes(canonical: pl.Series) -> np.ndarray:
    """The 60-bit hash of each canonical text (uint64), as Postgres computes it.

    MD5 runs per row in Python (hashlib, ~1 us a row; polars has no MD5, and a hash Postgres can compute in SQL
    is needed); everything around it is vectorised: the texts come out as bytes, the digests go into one buffer."""
    if canonical.null_count():
        raise ValueError("canonical texts are never null")
    digests = b"".join(map(_DIGEST, map(hashlib.md5, canonical.cast(pl.Binary).to_list())))
    high64 = np.frombuffer(digests, dtype=">u8")[::2]  # the first 8 of each 16-byte digest, big-endian
    return (high64 >> np.uint64(64 - HASH_BITS)).astype(np.uint64)


def _sum(hashes: np.ndarray) -> int:
    # exact: summing 32-bit halves in uint64 cannot overflow below 2^32 rows
    high = int((hashes >> np.uint64(32)).sum(dtype=np.uint64))
    low = int((hashes & np.uint64(0xFFFFFFFF)).sum(dtype=np.uint64))
    return (high << 32) + low


def lake_checksum(table: SourceTable, frames: pl.DataFrame | Iterable[pl.DataFrame]) -> Checksum:
    """The checksum of a frame, or of a stream of chunks (the same as of their concatenation)."""
    if isinstance(frames, pl.DataFrame):
        frames = (frames,)
    result = Checksum()
    for frame in frames:
        if frame.height:
            result += Checksum(frame.height, _sum(row_hashes(canonical_rows(frame, table))))
    return result


def delta_checksum(table: SourceTable, uri: str, *, version: int | None = None,
                   chunk_rows: int = 250_000) -> Checksum:
    """The checksum of a Delta table's live rows (deletion vectors applied: read through polars, never delta-rs's
    pyarrow readers), streamed in chunks of the registry columns only; no table is 0 rows."""
    if load_table(uri) is None:
        return Checksum()
    scan = pl.scan_delta(uri, version=version).select(table.column_names)
    return lake_checksum(table, scan.collect_batches(chunk_size=chunk_rows, maintain_order=False))


def source_checksum(conn: psycopg.Connection, table: SourceTable, schema: str = "public") -> Checksum:
    row = conn.execute(checksum_sql(table, schema)).fetchone()
    assert row is not None
    return Checksum(int(row[0]), int(row[1]))


# --- reconciliation -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reconciliation:
    table: str
    status: str  # PASSED, FAILED or SKIPPED
    reason: str  # why it failed or was skipped; for a pass, a short summary
    source_rows: int | None = None
    lake_rows: int | None = None
    source_checksum: str | None = None  # decimal: the sum of the rows' 60-bit hashes
    lake_checksum: str | None = None
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def parse_lsn(text: str) -> int:
    """A pg_lsn's text (`16/B374D848`) as the integer Debezium writes to source.lsn."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _full_xid(xid: int, xmax: int) -> int:
    """A 32-bit transaction id (Debezium's txId) as the 64-bit one nearest below `xmax` (a snapshot's); ids that
    already carry an epoch (>= 2^32) are kept."""
    if xid >= 1 << 32:
        return xid
    delta = (xid - xmax) % (1 << 32)
    return xmax + (delta - (1 << 32) if delta >= 1 << 31 else delta)


@dataclass(frozen=True)
class SourceSnapshot:
    """What reconciliation needs of the Postgres snapshot it compares against."""

    lsn: int  # the WAL insert position read in the snapshot's first statement: every commit it sees is before
    xmin: int  # pg_current_snapshot(): 64-bit transaction ids
    xmax: int
    running: frozenset[int]
    # the replication slot's restart_lsn, read before the snapshot: a transaction running at the snapshot, or
    # started after it, has all its changes at or beyond it (decoding would need them from there)
    restart_lsn: int

    def sees(self, tx_id: int) -> bool:
        """Whether a transaction (32-bit id as Debezium's txId, or 64-bit) committed before the snapshot; ids
        below xmin are taken as finished (the check is only asked about recent ones)."""
        full = _full_xid(tx_id, self.xmax)
        return full < self.xmax and full not in self.running


def reconcile_with_source(table: SourceTable, *, conninfo: str, curated_uri: str, raw_uri: str, topic: str,
                          bootstrap: str, slot_name: str = "cardo_servicing", wait_s: float = 30.0,
                          chunk_rows: int = 250_000, schema: str = "public") -> Reconciliation:
    """Compare the curated table at `curated_uri` with `<schema>.<table>` in Postgres, once the lake has caught up
    with one snapshot of it; SKIPPED (with the reason) whenever that cannot be established, never PASSED.

    In order: Postgres is reachable; in a REPEATABLE READ snapshot taken at WAL position L, Debezium's slot has
    confirmed L (waiting up to `wait_s`); raw holds every message Kafka has of `topic`; curated has applied all of
    raw; raw holds no change the snapshot cannot see (`raw_changes_after_snapshot`). Then both checksums are
    computed, the source's in that snapshot, the lake's at the curated version checked."""
    run = _Run(table, {"slot": slot_name, "topic": topic})
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        message = str(exc).strip()
        return run.skip("the servicing database is not reachable, nothing to reconcile against: "
                        + (message.splitlines()[0] if message else type(exc).__name__))
    with conn:
        slot = conn.execute("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                            (slot_name,)).fetchone()
        if slot is None:
            return run.skip(f"no replication slot {slot_name!r} in the servicing database: Debezium is not "
                            "capturing it, so the lake has no position to compare at")
        if slot[0] is None:
            return run.skip(f"replication slot {slot_name!r} has no restart LSN (invalidated?): Debezium cannot "
                            "stream from it")
        # Raw already behind Kafka: no snapshot can match, so skip now rather than wait for the slot (under a steady
        # stream of changes every run would otherwise wait wait_s for nothing). Checked again in the snapshot.
        if (reason := run.raw_behind_kafka(bootstrap, topic, raw_uri)[1]) is not None:
            return run.skip(reason)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            return run.in_snapshot(conn, parse_lsn(slot[0]), curated_uri=curated_uri, raw_uri=raw_uri, topic=topic,
                                   bootstrap=bootstrap, slot_name=slot_name, wait_s=wait_s, chunk_rows=chunk_rows,
                                   schema=schema)
        finally:
            conn.execute("ROLLBACK")


class _Run:
    def __init__(self, table: SourceTable, details: dict):
        self.table, self.details, self.started = table, details, time.monotonic()

    def skip(self, reason: str) -> Reconciliation:
        self.details["seconds"] = round(time.monotonic() - self.started, 3)
        return Reconciliation(self.table.name, SKIPPED, reason, details=self.details)

    def raw_behind_kafka(self, bootstrap: str, topic: str, raw_uri: str) -> tuple[int | None, str | None]:
        """(raw's version, why raw is not caught up with Kafka's end offsets of `topic`, or None when it is)."""
        try:
            kafka_ends = end_offsets(bootstrap, [topic])[topic]
        except KafkaUnavailable as exc:
            return None, str(exc)
        raw = OffsetTrackedTable(raw_uri)  # its version is pinned from here on
        raw_version = raw.version()
        committed = raw.next_offsets(topic, sorted(kafka_ends))
        self.details.update(kafka_end_offsets=kafka_ends, raw_offsets=committed, raw_version=raw_version)
        behind = {p: end - committed[p] for p, end in kafka_ends.items() if end != committed[p]}
        if any(gap < 0 for gap in behind.values()):
            return raw_version, (f"raw's offsets {committed} are beyond Kafka's end offsets {kafka_ends} of "
                                 f"{topic}: was the topic recreated?")
        if behind:
            parts = ", ".join(f"partition {p}: {n}" for p, n in sorted(behind.items()))
            return raw_version, (f"raw is {sum(behind.values())} messages behind Kafka on {topic} ({parts}): "
                                 "ingest first")
        return raw_version, None

    def in_snapshot(self, conn: psycopg.Connection, restart_lsn: int, *, curated_uri: str, raw_uri: str, topic: str,
                    bootstrap: str, slot_name: str, wait_s: float, chunk_rows: int, schema: str) -> Reconciliation:
        details = self.details
        # The first statement of the transaction takes its snapshot; the WAL insert position read in it is at or
        # beyond every commit the snapshot sees (pg_current_wal_lsn, the write position, can be behind them when
        # synchronous_commit is off, as on the local stack).
        row = conn.execute(
            "SELECT pg_current_wal_insert_lsn()::text, pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text, "
            "array(SELECT pg_snapshot_xip(s)::text) FROM pg_current_snapshot() AS s").fetchone()
        assert row is not None
        snapshot = SourceSnapshot(parse_lsn(row[0]), int(row[1]), int(row[2]), frozenset(int(x) for x in row[3]),
                                  restart_lsn)
        details.update(snapshot_lsn=row[0], snapshot_xmin=snapshot.xmin, snapshot_xmax=snapshot.xmax)

        if (reason := self._wait_for_slot(conn, snapshot, row[0], slot_name, wait_s)) is not None:
            return self.skip(reason)

        raw_version, reason = self.raw_behind_kafka(bootstrap, topic, raw_uri)
        if reason is not None:
            return self.skip(reason)

        curated = load_table(curated_uri)
        curated_version = None if curated is None else curated.version()
        applied = None if curated is None else curated.transaction_version(RAW_VERSION_APP_ID)
        details.update(curated_version=curated_version, curated_applied_raw_version=applied)
        if raw_version is not None:
            if applied is None or applied < raw_version:
                return self.skip(f"curated {self.table.name} has applied raw up to version {applied}, raw is at "
                                 f"version {raw_version}: apply first")
            details["raw_max_source_lsn"], after = raw_changes_after_snapshot(raw_uri, snapshot, version=raw_version)
            if after is not None:
                return self.skip(f"the lake holds changes made after the source snapshot ({after}); rerun")

        with ThreadPoolExecutor(1) as pool:  # Postgres aggregates while this process hashes the lake
            source_future = pool.submit(_timed, source_checksum, conn, self.table, schema)
            lake, lake_s = _timed(delta_checksum, self.table, curated_uri, version=curated_version,
                                  chunk_rows=chunk_rows)
            source, source_s = source_future.result()
        details.update(source_checksum_s=round(source_s, 3), lake_checksum_s=round(lake_s, 3),
                       seconds=round(time.monotonic() - self.started, 3))
        if source.rows != lake.rows:
            status, reason = FAILED, f"row counts differ: {source.rows} in Postgres, {lake.rows} in the lake"
        elif source.total != lake.total:
            status, reason = FAILED, (f"same row count ({source.rows}) but the checksums differ (Postgres {source}, "
                                      f"lake {lake}): some rows differ in a key or business column")
        else:
            status, reason = PASSED, f"{source.rows} rows, checksum {source} in Postgres and in the lake"
        return Reconciliation(self.table.name, status, reason, source.rows, lake.rows, str(source), str(lake),
                              details)

    def _wait_for_slot(self, conn: psycopg.Connection, snapshot: SourceSnapshot, snapshot_lsn_text: str,
                       slot_name: str, wait_s: float) -> str | None:
        """None once Debezium's slot has confirmed the snapshot's LSN (it confirms what Kafka acknowledged, so
        Kafka then holds every change the snapshot sees), else why not. The slot view is live inside the
        transaction. Debezium confirms only commits it processed, so on an idle database the slot would stay
        behind any WAL written since (checkpoints, other databases): its heartbeat action query writes a logical
        message each second for it to confirm (deploy/connect/servicing-postgres.properties; measured 1-2 s)."""
        waiting_since = time.monotonic()
        while True:
            row = conn.execute("SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots "
                               "WHERE slot_name = %s", (slot_name,)).fetchone()
            if row is None:
                return f"replication slot {slot_name!r} was dropped while reconciling"
            lag = max(0, snapshot.lsn - (parse_lsn(row[0]) if row[0] is not None else 0))
            waited = time.monotonic() - waiting_since
            self.details.update(slot_confirmed_flush_lsn=row[0], slot_lag_bytes=lag, slot_active=row[1],
                                slot_wait_s=round(waited, 3))
            if lag == 0:
                return None
            if waited >= wait_s:
                return (f"Debezium's replication slot {slot_name!r} stayed {lag} bytes behind the source snapshot "
                        f"(snapshot LSN {snapshot_lsn_text}, confirmed {row[0]}, slot "
                        f"{'active' if row[1] else 'inactive'}) for {wait_s:g} s: changes may still be on their way "
                        "to Kafka")
            time.sleep(SLOT_POLL_S)


def _timed(function, *args, **kwargs):
    started = time.monotonic()
    result = function(*args, **kwargs)
    return result, time.monotonic() - started


def raw_changes_after_snapshot(raw_uri: str, snapshot: SourceSnapshot, *, version: int | None = None
                               ) -> tuple[int | None, str | None]:
    """(raw's newest source_lsn, why raw holds a change `snapshot` cannot see, or None).

    Such a change has a source_lsn beyond the snapshot's, or comes from a transaction the snapshot counts as running
    or future (a transaction running at the snapshot may commit later with all its changes before its LSN). Only
    rows from the slot's restart LSN on can be of such a transaction (see `SourceSnapshot`). Raw is append-only
    without deletion vectors: two of its columns are scanned, by polars."""
    recent = (pl.col("source_lsn") >= snapshot.restart_lsn) & pl.col("source_tx_id").is_not_null()
    found = pl.scan_delta(raw_uri, version=version).select(
        max_lsn=pl.col("source_lsn").max(),
        tx_ids=pl.col("source_tx_id").filter(recent).unique().implode(),
    ).collect()
    max_lsn = found["max_lsn"][0]
    if max_lsn is not None and max_lsn > snapshot.lsn:
        return max_lsn, f"raw's newest source_lsn {max_lsn} is beyond the snapshot's {snapshot.lsn}"
    for tx_id in sorted(found["tx_ids"][0].to_list()):
        if not snapshot.sees(tx_id):
            return max_lsn, f"transaction {tx_id} in raw committed after the snapshot was taken"
    return max_lsn, None
