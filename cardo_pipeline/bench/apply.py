"""`cardo bench apply --rows N --changes M --json`: apply-changes into a curated loans table of N rows, against a
naive baseline, and the Iceberg mirror of the result; one JSON line.

The book is a mature servicing book: loans originated over twenty years, most of them closed, the open ones the
recent ones. The M change events are 70% updates, 15% inserts, 10% deletes and 5% late duplicates, delivered
with some neighbours swapped (out of order). Updates and deletes fall mostly on active and recent loans; an
update leaves the TOASTed servicer_notes unchanged (Debezium's placeholder) when the loan has long notes.

Measured in the same run:
- apply: the events land in raw (10k per raw version, as the ingest writes them), then `CuratedStore.apply`
  folds them into `curated/loans` and `curated/loans_history` (both built beforehand with the N rows);
- naive: one delta-rs MERGE of the batch reduced to each key's last event into an unbucketed table of the same
  N rows, as kafka2delta does (no history, no tombstones, no TOAST handling);
- iceberg: `IcebergMirror.sync` of the applied batch (after an untimed first copy);
- verified: the curated rows and SCD2 versions of every touched key equal the oracle's replay of those keys'
  initial rows and events, and the untouched keys are all still there.
Each timed step starts with the files written before it flushed to disk (`_settle`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from cardo_pipeline.bench.memory import PeakTreeRss
from cardo_pipeline.cdc.arrow_types import raw_arrow_schema
from cardo_pipeline.curate.apply import LSN, OFFSET, SOURCE_TS, UNCHANGED_TOAST
from cardo_pipeline.curate.merge_on_read import writer_properties
from cardo_pipeline.curate.oracle import replay
from cardo_pipeline.curate.storage import (
    CURATED_CONFIGURATION,
    RAW_VERSION_APP_ID,
    CuratedLocations,
    CuratedStore,
    current_schema,
    history_schema,
)
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.mirror.iceberg import IcebergMirror, sql_catalog
from cardo_pipeline.tables import TABLES_BY_NAME

LOANS = TABLES_BY_NAME["loans"]
TOPIC = LOANS.topic("bench")
START = datetime(2006, 1, 1, tzinfo=UTC)
BOOK_DAYS = 20 * 365
CHUNK = 500_000
RAW_BATCH = 10_000
PRODUCTS = np.array(["mortgage", "consumer", "auto", "sme"])
TERMS = {"mortgage": (240, 360), "consumer": (24, 60), "auto": (36, 72), "sme": (36, 120)}


def _notes_pool(rng: np.random.Generator, count: int, low: int, high: int) -> list[str]:
    words = ["call", "borrower", "promised", "payment", "arrears", "letter", "sent", "visit", "collateral", "valuation",
             "restructuring", "agreed", "employer", "confirmed", "income", "hardship", "plan", "review", "branch"]
    pool = []
    for _ in range(count):
        text = []
        while sum(map(len, text)) + len(text) < int(rng.integers(low, high)):
            text.append(words[int(rng.integers(len(words)))])
        pool.append(" ".join(text))
    return pool


def book_chunk(start_id: int, count: int, total: int, rng: np.random.Generator, long_notes: list[str],
               short_notes: list[str]) -> pl.DataFrame:
    """Loans start_id .. start_id + count - 1 of a book of `total`: ids follow origination order."""
    ids = np.arange(start_id, start_id + count, dtype=np.int64)
    product = PRODUCTS[rng.choice(4, count, p=[0.25, 0.35, 0.25, 0.15])]
    low = np.vectorize(lambda p: TERMS[p][0])(product)
    high = np.vectorize(lambda p: TERMS[p][1])(product)
    term = rng.integers(low, high + 1).astype(np.int32)
    originated = (ids * BOOK_DAYS // max(total, 1)).astype(np.int32) + (START.date() - datetime(1970, 1, 1).date()).days
    matures = originated + term * 30
    today = (START.date() - datetime(1970, 1, 1).date()).days + BOOK_DAYS
    open_ = matures > today
    principal = np.where(product == "mortgage", rng.integers(80_000, 600_000, count),
                         rng.integers(2_000, 60_000, count))
    remaining = np.clip((matures - today) / (term * 30), 0, 1)
    status = np.where(open_, np.where(rng.random(count) < 0.03, "defaulted", "active"),
                      np.where(rng.random(count) < 0.05, "written_off", "repaid"))
    kind = rng.random(count)
    long_share = np.where(np.isin(product, ["mortgage", "sme"]), 0.25, 0.05)
    notes = pl.Series([None] * count, dtype=pl.String)
    long_idx, short_idx = np.flatnonzero(kind < long_share), np.flatnonzero((kind >= long_share) & (kind < 0.4))
    notes = notes.scatter(long_idx, pl.Series(long_notes).gather(rng.integers(len(long_notes), size=len(long_idx))))
    notes = notes.scatter(short_idx, pl.Series(short_notes).gather(rng.integers(len(short_notes),
                                                                               size=len(short_idx))))
    return pl.DataFrame({
        "loan_id": ids, "borrower_id": rng.integers(1, max(total // 2, 2), count),
        "product": product, "currency": "EUR",
        "principal": principal, "interest_rate": rng.integers(1_000, 12_000, count),
        "term_months": term, "origination_date": originated, "maturity_date": matures,
        "outstanding_principal": (principal * remaining).astype(np.int64), "status": status,
        "days_past_due": np.where(status == "defaulted", 120, np.where(rng.random(count) < 0.05, 30, 0)).astype(
            np.int32),
        "servicer_notes": notes,
        "updated_at": (START.timestamp() + (ids * BOOK_DAYS * 86400 // max(total, 1))) * 1_000_000,
    })


def loans_arrow(frame: pl.DataFrame) -> pa.Table:
    """The book's columns in the curated types (amounts in whole euros, rates in thousandths of a percent)."""
    schema = current_schema(LOANS)
    table = frame.to_arrow()
    columns = {}
    for name in LOANS.column_names:
        column = table[name]
        target = schema.field(name).type
        if name == "interest_rate":
            column = pa.compute.cast(pa.compute.divide(column.cast(pa.float64()), 100_000.0), target, safe=False)
        elif pa.types.is_decimal(target):  # whole euros; via a wide decimal, as int64 needs precision 19
            column = pa.compute.cast(column.cast(pa.decimal128(21, target.scale)), target, safe=False)
        elif pa.types.is_date32(target):
            column = column.cast(pa.int32()).cast(target)
        elif pa.types.is_timestamp(target):
            column = column.cast(pa.int64()).cast(target)
        else:
            column = column.cast(target)
        columns[name] = column
    return pa.table(columns)


def build_book(lake: Path, rows: int, seed: int) -> tuple[CuratedLocations, str]:
    """curated/loans (+ history) and an unbucketed naive copy, N rows each; raw exists, empty, at version 0."""
    rng = np.random.default_rng(seed)
    long_notes, short_notes = _notes_pool(rng, 64, 2_100, 3_200), _notes_pool(rng, 64, 40, 300)
    locations = CuratedLocations.in_lake(str(lake), LOANS)
    raw = OffsetTrackedTable(locations.raw)
    raw.ensure_exists(raw_arrow_schema(LOANS))
    naive = str(lake / "naive" / "loans")
    commit = CommitProperties(app_transactions=[Transaction(app_id=RAW_VERSION_APP_ID, version=0)])
    for start in range(1, rows + 1, CHUNK):
        book = loans_arrow(book_chunk(start, min(CHUNK, rows + 1 - start), rows, rng, long_notes, short_notes))
        seq = pa.array(book["loan_id"].to_numpy() * 10, pa.int64())
        ts = book["updated_at"]
        current = book.append_column(LSN, seq).append_column(OFFSET, pa.array(np.zeros(len(seq), np.int64))) \
            .append_column(SOURCE_TS, ts)
        history = book.append_column("valid_from_lsn", seq).append_column(
            "valid_from_offset", pa.array(np.zeros(len(seq), np.int64)))
        history = history.append_column("valid_to_lsn", pa.nulls(len(seq), pa.int64())).append_column(
            "valid_to_offset", pa.nulls(len(seq), pa.int64())).append_column("valid_from_ts", ts).append_column(
            "valid_to_ts", pa.nulls(len(seq), ts.type)).append_column(
            "is_current", pa.array(np.ones(len(seq), bool))).append_column(
            "is_deleted", pa.array(np.zeros(len(seq), bool))).append_column(
            UNCHANGED_TOAST, pa.nulls(len(seq), pa.string()))
        first = start == 1
        # the curated tables in the layout the apply writes; the naive one as kafka2delta's writes are
        write_deltalake(locations.current, current.cast(current_schema(LOANS)), mode="append",
                        configuration=CURATED_CONFIGURATION if first else None, commit_properties=commit,
                        writer_properties=writer_properties())
        write_deltalake(locations.history, history.cast(history_schema(LOANS)), mode="append",
                        configuration=CURATED_CONFIGURATION if first else None, commit_properties=commit,
                        writer_properties=writer_properties())
        write_deltalake(naive, book, mode="append")
    return locations, naive


def _book_rows(naive_uri: str, keys: np.ndarray) -> pl.DataFrame:
    return pl.scan_delta(naive_uri).filter(pl.col("loan_id").is_in(keys)).collect()


def change_events(rows: int, changes: int, seed: int, naive_uri: str) -> pa.Table:
    """M raw rows of loans (Debezium's c, u, d), in delivery order."""
    rng = np.random.default_rng(seed + 1)
    kinds = rng.choice(4, changes, p=[0.70, 0.15, 0.10, 0.05])  # update, insert, delete, late duplicate
    active = pl.read_delta(naive_uri, columns=["loan_id", "status"]).filter(
        pl.col("status") == "active")["loan_id"].to_numpy()
    recent = np.arange(max(1, rows - rows // 10), rows + 1)

    def pick(count: int) -> np.ndarray:  # most on active and recent loans, some anywhere (corrections)
        where = rng.random(count)
        return np.where(where < 0.55, rng.choice(active, count) if len(active) else rng.integers(1, rows + 1, count),
                        np.where(where < 0.85, rng.choice(recent, count), rng.integers(1, rows + 1, count)))

    deleted = np.unique(pick(int((kinds == 2).sum())))
    updated = pick(int((kinds == 0).sum()))
    updated = np.where(np.isin(updated, deleted), rng.integers(1, rows + 1, len(updated)), updated)
    updated = updated[~np.isin(updated, deleted)]
    inserted = np.arange(rows + 1, rows + 1 + int((kinds == 1).sum()))
    events = []
    base = _book_rows(naive_uri, np.concatenate([updated, deleted, [1]]))
    by_id = {r["loan_id"]: r for r in base.to_dicts()}
    lsn = rows * 10 + 10
    for loan_id in updated:
        row = dict(by_id[int(loan_id)])
        row["outstanding_principal"] = max(0, row["outstanding_principal"] - int(rng.integers(100, 2_000)))
        row["days_past_due"] = int(rng.choice([0, 0, 0, 30, 60]))
        toast = row["servicer_notes"] is not None and len(row["servicer_notes"]) > 2_000 and rng.random() < 0.7
        events.append(("u", row, toast))
    for loan_id in inserted:
        events.append(("c", {**by_id[1], "loan_id": int(loan_id), "servicer_notes": None}, False))
    for loan_id in deleted:
        events.append(("d", {"loan_id": int(loan_id)}, False))
    order = rng.permutation(len(events))
    events = [events[i] for i in order]
    records = []
    for position, (op, row, toast) in enumerate(events):
        lsn += 10
        image = {c: row.get(c) for c in LOANS.column_names}
        if toast:
            image["servicer_notes"] = None
        records.append({"op": op, "key": json.dumps({"loan_id": row["loan_id"]}, separators=(",", ":")),
                        "before": image if op == "d" else None, "after": None if op == "d" else image,
                        "unchanged_toast": ["servicer_notes"] if toast else [], "source_lsn": lsn,
                        "source_tx_id": lsn, "snapshot": "false", "offset": position})
    late = rng.choice(len(records), int((kinds == 3).sum())) if records else []
    records += [dict(records[i]) for i in late]  # late duplicates: the same event once more, later
    for i in range(0, len(records) - 1, 17):  # out of order: neighbours swapped
        records[i], records[i + 1] = records[i + 1], records[i]
    return _raw_table(records)


def _raw_table(records: list[dict]) -> pa.Table:
    schema = raw_arrow_schema(LOANS)
    now = datetime.now(UTC)
    for record in records:
        for image in ("before", "after"):
            if record[image] is not None:
                record[image] = _typed_image(record[image])
        record.update(source_ts=now, source_table="loans", topic=TOPIC, partition=0, kafka_timestamp=now,
                      ingested_at=now)
    return pa.Table.from_pylist(records, schema=schema)


def _typed_image(image: dict) -> dict:
    from decimal import Decimal

    out = dict(image)
    for name in ("principal", "outstanding_principal"):
        if out.get(name) is not None and not isinstance(out[name], Decimal):
            out[name] = Decimal(int(out[name]))
    if out.get("interest_rate") is not None and not isinstance(out["interest_rate"], Decimal):
        out["interest_rate"] = Decimal(int(out["interest_rate"])) / Decimal(100_000)
    for name in ("origination_date", "maturity_date"):
        if isinstance(out.get(name), int):
            out[name] = datetime(1970, 1, 1).date() + timedelta(days=out[name])
    if isinstance(out.get("updated_at"), int):
        out["updated_at"] = datetime.fromtimestamp(out["updated_at"] / 1e6, UTC)
    return out


def naive_merge(naive_uri: str, events: pa.Table) -> None:
    """kafka2delta's apply: the batch reduced to each key's last event, one MERGE."""
    frame = pl.from_arrow(events)
    assert isinstance(frame, pl.DataFrame)
    last = frame.sort(["source_lsn", "offset"]).group_by("key", maintain_order=True).last()
    image = pl.when(pl.col("op") == "d").then(pl.col("before")).otherwise(pl.col("after"))
    source = last.select(image.struct.unnest(), pl.col("op").alias("_op")).to_arrow()
    table = DeltaTable(naive_uri)
    source = source.cast(pa.schema([*pa.schema(table.schema().to_arrow()), pa.field("_op", pa.string())]))
    (table.merge(source, "t.loan_id = s.loan_id", source_alias="s", target_alias="t")
     .when_matched_delete(predicate="s._op = 'd'")
     .when_matched_update_all(predicate="s._op <> 'd'", except_cols=["_op"])
     .when_not_matched_insert_all(predicate="s._op <> 'd'", except_cols=["_op"])
     .execute())


def touched_keys(events: pa.Table) -> np.ndarray:
    return np.array(sorted({json.loads(k)["loan_id"] for k in events["key"].to_pylist()}), np.int64)


def verify(locations: CuratedLocations, initial: pa.Table, events: pa.Table, touched: np.ndarray,
           rows: int) -> bool:
    """Touched keys: equal to the oracle's replay of their initial rows and events. The rest: still there."""
    # the initial rows as snapshot reads at the sequence build_book gave them (LSN loan_id * 10, offset 0), each on
    # a partition of its own: the oracle tells events apart by their Kafka position
    snapshot = [{"op": "r", "key": json.dumps({"loan_id": r["loan_id"]}), "before": None, "after": r,
                 "unchanged_toast": [], "source_lsn": r["loan_id"] * 10, "source_tx_id": 0, "snapshot": "true",
                 "offset": 0, "partition": i, "topic": "bench.snapshot", "source_ts": r["updated_at"]}
                for i, r in enumerate(initial.to_pylist())]
    expected_current, expected_history = replay(snapshot + events.to_pylist(), LOANS)
    current = pl.scan_delta(locations.current).select(LOANS.column_names)
    mine = current.filter(pl.col("loan_id").is_in(touched)).sort("loan_id").collect().to_dicts()
    untouched = current.filter(~pl.col("loan_id").is_in(touched)).select(pl.len()).collect().item()
    versions = ["valid_from_lsn", "valid_from_offset", "valid_to_lsn", "valid_to_offset", "is_current"]
    history = (pl.scan_delta(locations.history).filter(pl.col("loan_id").is_in(touched) & ~pl.col("is_deleted"))
               .select(*LOANS.column_names, *versions).sort(["loan_id", "valid_from_lsn", "valid_from_offset"])
               .collect().to_dicts())
    return mine == expected_current and history == expected_history and untouched == rows - initial.num_rows


def _settle() -> None:
    """Before a timed step: the files written so far flushed to disk, so the kernel writing them back (a GB and
    more after the book is built) does not take the step's time."""
    os.sync()


def _timed_apply(engine: str, locations: CuratedLocations):
    """(report, seconds) of one apply of everything raw holds, by `engine`; Spark's session is started before the
    clock (a long-running code location or cluster keeps it)."""
    if engine == "spark":
        from cardo_pipeline.spark.apply import apply_with_spark
        from cardo_pipeline.spark.session import spark_session

        spark = spark_session()
        _warm_up(spark)
        _settle()
        started = time.perf_counter()
        report = apply_with_spark(spark, LOANS, locations)
        return report, time.perf_counter() - started
    _settle()
    started = time.perf_counter()
    report = CuratedStore(LOANS, locations).apply()
    return report, time.perf_counter() - started


def _warm_up(spark) -> None:
    """One apply of a tiny book first: a long-running Spark cluster has its classes loaded and its code compiled
    (the first Delta MERGE of a JVM costs ~10 s more)."""
    from cardo_pipeline.spark.apply import apply_with_spark

    lake = Path(tempfile.mkdtemp(prefix="cardo-bench-warm-up-"))
    try:
        locations, naive = build_book(lake, 1_000, seed=1)
        events = change_events(1_000, 200, 1, naive)
        OffsetTrackedTable(locations.raw).append(events, TOPIC, {0: events.num_rows}, {})
        apply_with_spark(spark, LOANS, locations)
    finally:
        shutil.rmtree(lake, ignore_errors=True)


def bench_apply(rows: int, changes: int, seed: int = 7, log=print, engine: str = "local") -> dict:
    """The local engine's apply, its naive baseline and the Iceberg mirror; with `engine="spark"`, the Spark
    engine's apply too, on a copy of the same lake (book, raw events), both verified against the oracle."""
    lake = Path(tempfile.mkdtemp(prefix="cardo-bench-apply-"))
    try:
        with PeakTreeRss() as rss:
            log(f"building a book of {rows:,} loans")
            locations, naive = build_book(lake, rows, seed)
            log(f"generating {changes:,} change events")
            events = change_events(rows, changes, seed, naive)
            touched = touched_keys(events)
            initial = _book_rows(naive, touched).to_arrow().cast(pa.schema(DeltaTable(naive).schema().to_arrow()))
            raw = OffsetTrackedTable(locations.raw)
            for start in range(0, events.num_rows, RAW_BATCH):
                batch = events.slice(start, RAW_BATCH)
                raw.append(batch, TOPIC, {0: start + batch.num_rows}, {})
            spark_locations = None
            if engine == "spark":  # the same book and events, before anything is applied
                spark_lake = lake / "spark-engine"
                for name in ("raw", "curated"):
                    shutil.copytree(lake / name, spark_lake / name)
                spark_locations = CuratedLocations.in_lake(str(spark_lake), LOANS)
            catalog = sql_catalog(f"sqlite:///{lake}/iceberg/catalog.db", lake / "iceberg" / "warehouse")
            mirror = IcebergMirror(catalog, "curated.loans", locations.current, LOANS, current_schema(LOANS))
            mirror.sync()  # the first copy, not measured

            log("applying")
            report, apply_seconds = _timed_apply("local", locations)
            log("mirroring into Iceberg")
            _settle()
            started = time.perf_counter()
            mirror.sync()
            iceberg_seconds = time.perf_counter() - started
            log("naive merge")
            _settle()
            started = time.perf_counter()
            naive_merge(naive, events)
            naive_seconds = time.perf_counter() - started
            verified = report.events == events.num_rows and verify(locations, initial, events, touched, rows)
        result = {
            "benchmark": "apply", "engine": engine, "rows": rows, "changes": events.num_rows,
            "apply_events_per_s": round(events.num_rows / apply_seconds),
            "apply_seconds": round(apply_seconds, 2),
            "naive_events_per_s": round(events.num_rows / naive_seconds),
            "speedup": round(naive_seconds / apply_seconds, 2),
            "iceberg_events_per_s": round(events.num_rows / iceberg_seconds),
            "peak_rss_mb": rss.mb, "verified": verified,
        }
        if spark_locations is not None:
            log("applying with Spark")
            spark_report, spark_seconds = _timed_apply("spark", spark_locations)
            spark_verified = (spark_report.events == events.num_rows
                              and verify(spark_locations, initial, events, touched, rows))
            result.update({
                "local_apply_events_per_s": result["apply_events_per_s"], "local_verified": verified,
                "spark_apply_events_per_s": round(events.num_rows / spark_seconds),
                "spark_apply_seconds": round(spark_seconds, 2), "spark_verified": spark_verified,
                "spark_over_local": round(apply_seconds / spark_seconds, 3),
                "spark_master": _spark_master(),
                "verified": verified and spark_verified,
            })
        return result
    finally:
        shutil.rmtree(lake, ignore_errors=True)


def _spark_master() -> str:
    from cardo_pipeline.spark.session import spark_session

    return spark_session().sparkContext.master
