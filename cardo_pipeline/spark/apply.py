"""Apply-changes (ARCHITECTURE section 5) on Spark: the local engine's `CuratedStore.apply`, same tables, same layout.

The two engines take turns on the same tables: each reads the raw versions after the last one both curated tables
hold (`CuratedStore.applied_raw_version`, the Delta app transaction `RAW_VERSION_APP_ID`), folds them into the
history rows of the keys they touch, and writes only the rows that differ, one commit per table recording the raw
version. Here:
- the raw increment is read with Delta's change data feed, pinned to the raw version seen at the start, and decoded
  by the rules of `apply.changes_from_raw`;
- the fold is window functions over the key, ordered by sequence (LSN, offset): duplicates by (key, sequence) keep
  the stored row; a TOAST-unchanged column takes the last value provided within the key's live stretch (wrapped in
  a struct, so that a provided null counts as a value); valid_to is the key's next event or the first truncate
  after it, whichever comes first; the current row is a key's last event, if an upsert after the last truncate;
- the history is read through Spark's Delta reader (deletion vectors applied), of the touched keys only, or whole
  when a new truncate arrives (it ends versions of keys the batch does not touch);
- both tables are written by Delta MERGE (the history on key + valid_from, the current table with a delete for keys
  gone), with Delta's idempotent-DML session settings, so each commit carries the raw version as the app
  transaction the local engine writes and reads; a rerun after a crash between the two commits repairs.

Metadata (versions, app transactions, protocols) comes from delta-rs, as the local engine reads it; rows go
through Spark. Tables created here get the local engine's properties (deletion vectors, change data feed) and
no feature the local engine's writer does not handle.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa
from deltalake import DeltaTable

from cardo_pipeline.curate.apply import (
    LSN,
    OFFSET,
    OP,
    RAW_COLUMNS,
    SOURCE_TS,
    UNCHANGED_TOAST,
    UPSERT_OPS,
    VALID_FROM,
)
from cardo_pipeline.curate.merge_on_read import (
    HANDLED_READER_FEATURES,
    HANDLED_WRITER_FEATURES,
    unsupported_features,
)
from cardo_pipeline.curate.storage import (
    CURATED_CONFIGURATION,
    RAW_VERSION_APP_ID,
    TRUNCATES_SCHEMA,
    ApplyReport,
    CuratedLocations,
    CuratedStore,
    current_schema,
    history_schema,
)
from cardo_pipeline.ingest.delta_log import load_table
from cardo_pipeline.tables import SourceTable

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
TXN_VERSION = "spark.databricks.delta.write.txnVersion"
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
# What the local engine's hand-written commits handle (`merge_on_read`): Spark may add other features by default (row
# tracking, in-commit timestamps, ...): tables made here switch those off, and a table with more is refused
LOCAL_FEATURES = HANDLED_WRITER_FEATURES | HANDLED_READER_FEATURES
# Properties Spark sessions can turn on by default (`spark.databricks.delta.properties.defaults.*`) whose features
# the local engine does not handle
SPARK_DEFAULTS_OFF = ("enableRowTracking", "enableInCommitTimestamps", "enableTypeWidening", "checkpointPolicy")
SOURCE = "_cardo_src"  # 0: a stored history row, 1: a change of the batch (a stored row wins a duplicate)
LIVE = "_cardo_live"
OLD = "__old_"  # a stored history row's stored values, carried to find the rows that differ


class ProtocolError(RuntimeError):
    """A curated table has a Delta feature the local engine cannot write."""


def apply_with_spark(spark: SparkSession, table: SourceTable, locations: CuratedLocations, *,
                     log: Callable[[str], None] = lambda message: None) -> ApplyReport:
    """Apply the raw versions after the last one applied to the curated tables, as `CuratedStore.apply` does."""
    started = time.monotonic()
    store = CuratedStore(table, locations)
    raw = load_table(locations.raw)
    if raw is None:
        before = store.applied_raw_version()
        return ApplyReport(table.name, before, before)
    latest = raw.version()  # the increment ends here, whatever lands meanwhile
    ensure_curated_tables(spark, table, locations)
    before = store.applied_raw_version()
    report = ApplyReport(table.name, before, before, truncates=_stored_truncates(spark, locations.truncates))
    if before is None or before < latest:
        _apply_increment(spark, table, locations, 0 if before is None else before + 1, latest, report, log)
        log(f"{table.name}: raw up to version {latest}: {report.events} events, {report.keys_touched} keys touched")
    report.current_version = DeltaTable(locations.current).version()
    report.history_version = DeltaTable(locations.history).version()
    report.seconds = time.monotonic() - started
    return report


# --- tables -------------------------------------------------------------------------------------------------

def ensure_curated_tables(spark: SparkSession, table: SourceTable, locations: CuratedLocations) -> None:
    """Create the current and history tables if missing (the local engine's schema and properties), and check
    that both keep to the features the local engine handles."""
    properties = dict(CURATED_CONFIGURATION)
    for name in SPARK_DEFAULTS_OFF:  # only those the session turns on: the table's properties stay the local ones
        default = spark.conf.get(f"spark.databricks.delta.properties.defaults.{name}", None)
        if default is not None and default.lower() not in ("false", "none", "classic"):
            properties[f"delta.{name}"] = "classic" if name == "checkpointPolicy" else "false"
    for uri, schema in ((locations.current, current_schema(table)), (locations.history, history_schema(table))):
        if load_table(uri) is None:
            _create(spark, uri, schema, properties)
        check_protocol(DeltaTable(uri))
    history = DeltaTable(locations.history)
    CuratedStore(table, locations)._check_layout(history)  # noqa: SLF001 - the same refusal as the local engine


def check_protocol(table: DeltaTable) -> None:
    extra = unsupported_features(table)
    if extra:
        raise ProtocolError(f"{table.table_uri}: Delta features {extra} are not handled by the local engine")


def _create(spark: SparkSession, uri: str, schema: pa.Schema, properties: dict[str, str]) -> None:
    columns = ", ".join(f"`{f.name}` {spark_type(f.type)}{'' if f.nullable else ' NOT NULL'}" for f in schema)
    options = ", ".join(f"'{k}' = '{v}'" for k, v in properties.items())
    spark.sql(f"CREATE TABLE IF NOT EXISTS delta.`{uri}` ({columns}) USING delta"
              + (f" TBLPROPERTIES ({options})" if options else ""))


def spark_type(arrow: pa.DataType) -> str:
    """The Spark SQL type of an Arrow type of the curated layouts."""
    if pa.types.is_decimal(arrow):
        return f"DECIMAL({arrow.precision}, {arrow.scale})"
    if pa.types.is_timestamp(arrow):
        return "TIMESTAMP" if arrow.tz else "TIMESTAMP_NTZ"
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow):
        return f"ARRAY<{spark_type(arrow.value_type)}>"
    names = {pa.int64(): "BIGINT", pa.int32(): "INT", pa.int16(): "SMALLINT", pa.int8(): "TINYINT",
             pa.bool_(): "BOOLEAN", pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.date32(): "DATE",
             pa.string(): "STRING", pa.large_string(): "STRING", pa.binary(): "BINARY", pa.large_binary(): "BINARY"}
    if arrow in names:
        return names[arrow]
    raise ValueError(f"no Spark type for {arrow}")


def _stored_truncates(spark: SparkSession, uri: str) -> list[tuple[int, int]]:
    if load_table(uri) is None:
        return []
    return sorted({(row["lsn"], row["offset"]) for row in spark.read.format("delta").load(uri).collect()})


def _store_truncates(spark: SparkSession, uri: str, added: list[tuple[int, int]]) -> None:
    if load_table(uri) is None:
        _create(spark, uri, TRUNCATES_SCHEMA, {})
    spark.createDataFrame(added, "lsn BIGINT, offset BIGINT").write.format("delta").mode("append").save(uri)


# --- one increment ------------------------------------------------------------------------------------------

def _apply_increment(spark: SparkSession, table: SourceTable, locations: CuratedLocations, start: int, end: int,
                     report: ApplyReport, log: Callable[[str], None]) -> None:
    from pyspark.sql import functions as F

    started = time.monotonic()

    def step(what: str) -> None:
        log(f"{table.name}: {what} ({time.monotonic() - started:.1f} s)")

    key = list(table.primary_key)
    feed = raw_feed(spark, locations.raw, start, end).persist()
    cached = [feed]
    try:
        counted = feed.agg(F.count(F.lit(1)).alias("events"), F.collect_list(F.when(
            F.col("op") == "t", F.struct("source_lsn", "offset"))).alias("truncates")).first()
        assert counted is not None
        step(f"raw versions {start}..{end}: {counted['events']} events")
        new_truncates = {(row["source_lsn"], row["offset"]) for row in counted["truncates"]}
        added = sorted(new_truncates - set(report.truncates))
        if added:  # stored first, as the local engine does: idempotent, and a failed batch applies it again
            _store_truncates(spark, locations.truncates, added)
        truncates = report.truncates = sorted(set(report.truncates) | set(added))

        changes = changes_from_feed(feed, table)
        history = spark.read.format("delta").load(locations.history)
        if added:  # a truncate ends versions of keys the batch does not touch: every key is folded again
            old_history = history
            touched = changes.select(key).unionByName(history.select(key)).distinct()
        else:
            touched = changes.select(key).distinct()
            old_history = _semi(history, touched, key)
        folded = fold(stored_log(old_history, table), changes, table, truncates).persist()
        cached.append(folded)
        old_current = _semi(spark.read.format("delta").load(locations.current), touched, key)
        touched_count = folded.select(key).distinct().count()  # also materializes the fold before any write
        step(f"folded {touched_count} keys")

        metadata = json.dumps({"cardo.raw_version": str(end), "cardo.events": str(counted["events"]),
                               "cardo.engine": "spark"})
        with _idempotent(spark, end, metadata):
            written = _merge_history(spark, locations.history, history_changes(folded, table), table)
            step(f"history: {written} rows written")
            inserted, updated, deleted = _merge_current(spark, locations.current, folded, old_current, table,
                                                        truncates)
            step(f"current: {inserted} inserted, {updated} updated, {deleted} deleted")
    finally:
        for frame in cached:
            frame.unpersist()
    report.events += counted["events"]
    report.batches += 1
    report.keys_touched += touched_count
    report.history_rows_written += written
    report.inserted += inserted
    report.updated += updated
    report.deleted += deleted
    report.raw_version = end


class _idempotent:
    """Delta's idempotent-DML session settings for the writes within: each commit records `version` as the app
    transaction RAW_VERSION_APP_ID (and is skipped by a table that already holds it); unset on the way out."""

    def __init__(self, spark: SparkSession, version: int, metadata: str):
        self.spark, self.version, self.metadata = spark, version, metadata

    def __enter__(self) -> None:
        self.spark.conf.set(TXN_APP_ID, RAW_VERSION_APP_ID)
        self.spark.conf.set(TXN_VERSION, str(self.version))
        self.spark.conf.set(USER_METADATA, self.metadata)

    def __exit__(self, *exc: object) -> None:
        for name in (TXN_APP_ID, TXN_VERSION, USER_METADATA):
            self.spark.conf.unset(name)


def raw_feed(spark: SparkSession, uri: str, start: int, end: int) -> DataFrame:
    """The raw rows (the columns the apply reads) versions start..end added, from the change data feed; a table
    without a feed for those versions comes whole as of `end` (re-applying what was applied changes nothing)."""
    from pyspark.sql import functions as F
    from pyspark.sql.utils import AnalysisException

    reader = spark.read.format("delta")
    try:
        feed = (reader.option("readChangeFeed", "true").option("startingVersion", start)
                .option("endingVersion", end).load(uri))
        feed.schema  # noqa: B018 - a version without a feed fails here
        return feed.filter(F.col("_change_type") == "insert").select(RAW_COLUMNS)
    except AnalysisException:
        return spark.read.format("delta").option("versionAsOf", end).load(uri).select(RAW_COLUMNS)


def changes_from_feed(feed: DataFrame, table: SourceTable) -> DataFrame:
    """The batch's upserts and deletes in the log's layout, by the rules of `apply.changes_from_raw`: c/u/r are
    upserts with the after image, d a delete with the key only from the before image; truncates and Kafka
    tombstones are not events of a key."""
    from pyspark.sql import functions as F

    is_delete = F.col("op") == "d"
    key = set(table.primary_key)
    types = _spark_types(table)
    columns = [
        F.when(is_delete, F.col("before").getField(c.name) if c.name in key else F.lit(None))
        .otherwise(F.col("after").getField(c.name)).cast(types[c.name]).alias(c.name)
        for c in table.columns
    ]
    return feed.filter(F.col("op").isin(*UPSERT_OPS, "d")).select(
        *columns, F.col("source_lsn").cast("bigint").alias(LSN), F.col("offset").cast("bigint").alias(OFFSET),
        F.when(is_delete, F.lit("delete")).otherwise(F.lit("upsert")).alias(OP),
        F.when(is_delete, F.lit(None)).otherwise(F.col("unchanged_toast")).cast("array<string>").alias(UNCHANGED_TOAST),
        F.col("source_ts").cast("timestamp").alias(SOURCE_TS), F.lit(1).alias(SOURCE),
    )


@functools.cache
def _spark_types(table: SourceTable) -> dict[str, str]:
    return {f.name: spark_type(f.type) for f in history_schema(table)}


def stored_log(history: DataFrame, table: SourceTable) -> DataFrame:
    """History rows back as log rows (`apply.log_from_history`), each with its stored valid_to, is_current and
    TOAST-resolved values (OLD columns): what decides whether the row has to be written again."""
    from pyspark.sql import functions as F

    compared = ["valid_to_lsn", "valid_to_offset", "valid_to_ts", "is_current", *table.toasted]
    return history.select(
        *[c.name for c in table.columns],
        F.col("valid_from_lsn").alias(LSN), F.col("valid_from_offset").alias(OFFSET),
        F.when(F.col("is_deleted"), F.lit("delete")).otherwise(F.lit("upsert")).alias(OP),
        F.from_json(F.col(UNCHANGED_TOAST), "array<string>").alias(UNCHANGED_TOAST),
        F.col("valid_from_ts").alias(SOURCE_TS), F.lit(0).alias(SOURCE),
        *[F.col(c).alias(OLD + c) for c in compared],
    )


def _after(lsn: int, offset: int, *, inclusive: bool) -> Column:
    """Whether a row's sequence follows (lsn, offset) (or is it, when inclusive)."""
    from pyspark.sql import functions as F

    same = F.col(OFFSET) >= offset if inclusive else F.col(OFFSET) > offset
    return (F.col(LSN) > lsn) | ((F.col(LSN) == lsn) & same)


def fold(log: DataFrame, changes: DataFrame, table: SourceTable, truncates: list[tuple[int, int]]) -> DataFrame:
    """The log of the keys in `log` and `changes` after adding the changes (`apply.fold_changes`), with each row's
    SCD2 columns (`apply.history_frame`) and whether it is its key's current row (`apply.current_frame`)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    key = list(table.primary_key)
    merged = log.unionByName(changes, allowMissingColumns=True)
    by_event = Window.partitionBy(*key, LSN, OFFSET).orderBy(SOURCE)
    merged = merged.withColumn("_n", F.row_number().over(by_event)).filter(F.col("_n") == 1).drop("_n")
    by_key = Window.partitionBy(*key).orderBy(LSN, OFFSET)
    if table.toasted:
        # live stretches: a key's first event, a delete, or the first event after a truncate starts one
        truncated = F.lit(0)
        for lsn, offset in truncates:
            truncated = truncated + _after(lsn, offset, inclusive=True).cast("int")
        merged = merged.withColumn("_truncated", truncated)
        starts = (F.lag(LSN).over(by_key).isNull() | (F.col(OP) == "delete")
                  | (F.col("_truncated") != F.lag("_truncated").over(by_key)))
        merged = merged.withColumn("_stretch", F.sum(starts.cast("int")).over(
            by_key.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
        in_stretch = (Window.partitionBy(*key, "_stretch").orderBy(LSN, OFFSET)
                      .rowsBetween(Window.unboundedPreceding, Window.currentRow))
        resolved = {}
        for column in table.toasted:
            unchanged = (F.col(OP) == "upsert") & F.coalesce(F.array_contains(UNCHANGED_TOAST, column), F.lit(False))
            # the last providing row's value; a struct, so that a provided null is a value
            provided = F.when(~unchanged, F.struct(F.col(column).alias("v")))
            resolved[column] = F.last(provided, ignorenulls=True).over(in_stretch).getField("v")
        merged = merged.withColumns(resolved).drop("_truncated", "_stretch")

    next_lsn = F.lead(LSN).over(by_key)
    merged = merged.withColumns({"valid_to_lsn": next_lsn, "valid_to_offset": F.lead(OFFSET).over(by_key),
                                 "valid_to_ts": F.lead(SOURCE_TS).over(by_key)})
    merged = merged.withColumn("_last", F.col("valid_to_lsn").isNull())
    if truncates:  # the first truncate after valid_from ends it, when earlier than the key's next event
        first_lsn, first_offset = F.lit(None).cast("bigint"), F.lit(None).cast("bigint")
        for lsn, offset in reversed(truncates):
            follows = ~_after(lsn, offset, inclusive=True)
            first_lsn = F.when(follows, F.lit(lsn)).otherwise(first_lsn)
            first_offset = F.when(follows, F.lit(offset)).otherwise(first_offset)
        merged = merged.withColumns({"_t_lsn": first_lsn, "_t_offset": first_offset})
        ends = F.col("_t_lsn").isNotNull() & (
            F.col("valid_to_lsn").isNull() | (F.col("valid_to_lsn") > F.col("_t_lsn"))
            | ((F.col("valid_to_lsn") == F.col("_t_lsn")) & (F.col("valid_to_offset") > F.col("_t_offset"))))
        merged = merged.withColumns({
            "valid_to_lsn": F.when(ends, F.col("_t_lsn")).otherwise(F.col("valid_to_lsn")),
            "valid_to_offset": F.when(ends, F.col("_t_offset")).otherwise(F.col("valid_to_offset")),
            "valid_to_ts": F.when(ends, F.lit(None)).otherwise(F.col("valid_to_ts")),
        }).drop("_t_lsn", "_t_offset")
    live = (F.col(OP) == "upsert") & F.col("_last")
    if truncates:
        live = live & _after(*truncates[-1], inclusive=False)
    return merged.withColumn(LIVE, live).drop("_last")


def history_changes(folded: DataFrame, table: SourceTable) -> DataFrame:
    """The folded rows as history rows (`history_schema`), only those the stored history lacks or holds with
    other values: an event's own values never change once stored, only what later events decide (valid_to,
    TOAST-unchanged columns)."""
    from pyspark.sql import functions as F

    compared = ["valid_to_lsn", "valid_to_offset", "valid_to_ts", "is_current", *table.toasted]
    rows = folded.withColumn("is_current", F.col("valid_to_lsn").isNull())
    differs = F.col(SOURCE) == 1
    for column in compared:
        differs = differs | ~F.col(column).eqNullSafe(F.col(OLD + column))
    marks = F.when(F.size(UNCHANGED_TOAST) > 0, F.to_json(F.col(UNCHANGED_TOAST)))
    types = _spark_types(table)
    values = {**{c.name: F.col(c.name) for c in table.columns},
              "valid_from_lsn": F.col(LSN), "valid_from_offset": F.col(OFFSET), "valid_to_lsn": F.col("valid_to_lsn"),
              "valid_to_offset": F.col("valid_to_offset"), "valid_from_ts": F.col(SOURCE_TS),
              "valid_to_ts": F.col("valid_to_ts"), "is_current": F.col("is_current"),
              "is_deleted": F.col(OP) == "delete", UNCHANGED_TOAST: marks}
    return rows.filter(differs).select(*[values[f.name].cast(types[f.name]).alias(f.name)
                                         for f in history_schema(table)])


def _merge_history(spark: SparkSession, uri: str, changed: DataFrame, table: SourceTable) -> int:
    """New and changed history rows merged on key + valid_from; returns the rows written."""
    on = " AND ".join(f"t.`{c}` <=> s.`{c}`" for c in [*table.primary_key, *VALID_FROM])
    names = history_schema(table).names
    result = _merge(spark, uri, changed, on, [
        "WHEN MATCHED THEN UPDATE SET " + ", ".join(f"t.`{c}` = s.`{c}`" for c in names),
        _insert(names),
    ])
    return result["num_updated_rows"] + result["num_inserted_rows"]


def _merge_current(spark: SparkSession, uri: str, folded: DataFrame, old: DataFrame, table: SourceTable,
                   truncates: list[tuple[int, int]]) -> tuple[int, int, int]:
    """The touched keys' current rows: new and changed ones upserted, those of keys gone deleted; returns
    (inserted, updated, deleted)."""
    from pyspark.sql import functions as F

    key = list(table.primary_key)
    names = current_schema(table).names
    types = _spark_types(table)
    new = folded.filter(F.col(LIVE)).select(
        *[(F.col(n).cast(types[n]) if n in types else F.col(n)).alias(n) for n in names])
    compared = [LSN, OFFSET, *table.toasted]
    joined = new.alias("n").join(old.select(names).alias("o"), _key_condition("n", "o", key), "full_outer")
    present, existed = F.col(f"n.{LSN}").isNotNull(), F.col(f"o.{LSN}").isNotNull()
    differs = F.lit(False)
    for column in compared:
        differs = differs | ~F.col(f"n.{column}").eqNullSafe(F.col(f"o.{column}"))
    source = joined.filter((present & (~existed | differs)) | (~present & existed)).select(
        *[F.when(present, F.col(f"n.{n}")).otherwise(F.col(f"o.{n}") if n in key else F.lit(None)).alias(n)
          for n in names], present.alias(LIVE))
    on = " AND ".join(f"t.`{c}` <=> s.`{c}`" for c in key)
    result = _merge(spark, uri, source, on, [
        f"WHEN MATCHED AND NOT s.`{LIVE}` THEN DELETE",
        "WHEN MATCHED THEN UPDATE SET " + ", ".join(f"t.`{c}` = s.`{c}`" for c in names),
        f"WHEN NOT MATCHED AND s.`{LIVE}` THEN " + _insert(names).removeprefix("WHEN NOT MATCHED THEN "),
    ])
    return result["num_inserted_rows"], result["num_updated_rows"], result["num_deleted_rows"]


def _insert(names: list[str]) -> str:
    return (f"WHEN NOT MATCHED THEN INSERT ({', '.join(f'`{c}`' for c in names)}) "
            f"VALUES ({', '.join(f's.`{c}`' for c in names)})")


def _merge(spark: SparkSession, uri: str, source: DataFrame, on: str, clauses: list[str]) -> dict[str, int]:
    """One Delta MERGE (one commit, also with an empty source), with its row counts (zeros when Delta skipped it:
    the table already holds this raw version)."""
    view = f"cardo_merge_source_{id(source)}"
    source.createOrReplaceTempView(view)
    try:
        rows = spark.sql(f"MERGE INTO delta.`{uri}` t USING {view} s ON {on} " + " ".join(clauses)).collect()
    finally:
        spark.catalog.dropTempView(view)
    counts = rows[0].asDict() if rows else {}
    return {name: int(counts.get(name) or 0) for name in
            ("num_affected_rows", "num_updated_rows", "num_deleted_rows", "num_inserted_rows")}


def _key_condition(left: str, right: str, key: list[str]) -> Column:
    from pyspark.sql import functions as F

    return functools.reduce(lambda a, b: a & b,
                            [F.col(f"{left}.{c}").eqNullSafe(F.col(f"{right}.{c}")) for c in key])


def _semi(rows: DataFrame, keys: DataFrame, key: list[str]) -> DataFrame:
    """The rows whose key is in `keys` (null equal to null)."""
    return rows.alias("r").join(keys.alias("k"), _key_condition("r", "k", key), "left_semi")


# --- reading for tests and checks ---------------------------------------------------------------------------

def curated_rows_with_spark(spark: SparkSession, table: SourceTable,
                            locations: CuratedLocations) -> tuple[list[dict], list[dict]]:
    """(current rows, history rows) as Spark reads them, in the shape of `apply.current_rows` / `history_rows`
    and `oracle.replay`."""
    import polars as pl

    names = table.column_names
    key = list(table.primary_key)
    current = pl.from_arrow(spark.read.format("delta").load(locations.current).select(names).toArrow())
    history = pl.from_arrow(spark.read.format("delta").load(locations.history).filter("NOT is_deleted").select(
        *names, *VALID_FROM, "valid_to_lsn", "valid_to_offset", "is_current").toArrow())
    assert isinstance(current, pl.DataFrame) and isinstance(history, pl.DataFrame)
    return current.sort(key).to_dicts(), history.sort([*key, *VALID_FROM]).to_dicts()
