"""Checks on every raw table, generated from the registry: exactly-once offsets and schema compatibility
(blocking), the Pandera models of the raw log and its after-images, the Kafka lag and new dead letters (WARN); and
the dead-letter table's Pandera model."""


import dagster as dg
import polars as pl

from cardo_pipeline.cdc.models import dead_letter_model, raw_images_model, raw_model
from cardo_pipeline.defs.keys import DEAD_LETTER_KEY, raw_key
from cardo_pipeline.defs.quality.pandera_checks import markdown_table, pandera_asset_check
from cardo_pipeline.defs.resources import KafkaResource, LakeResource, QualityResource
from cardo_pipeline.ingest.audit import (
    audit_topic_offsets,
    dead_letters_between,
    incompatible_changes,
    kafka_lag,
    read_columns,
)
from cardo_pipeline.kafka_topics import KafkaUnavailable, end_offsets
from cardo_pipeline.quality.validate import LazySource, delta_source
from cardo_pipeline.tables import DEAD_LETTER_PATH, SOURCE_TABLES, SourceTable

KAFKA_LAG_CHECK = "kafka_lag"
NEW_DEAD_LETTERS_CHECK = "no_new_dead_letters"
SAMPLE_DEAD_LETTERS = 10
LAST_RUN_ROWS = "the rows the last raw run landed (each batch of the append-only log is validated once)"


def last_run_offsets(context: dg.AssetCheckExecutionContext, key: dg.AssetKey) -> dict[int, tuple[int, int]] | None:
    """{partition: (first offset, next offset)} the latest materialization of a raw asset landed, or None."""
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None
    metadata = event.asset_materialization.metadata
    if "offsets_committed" not in metadata:
        return None
    start = metadata["offsets_start"].value if "offsets_start" in metadata else {}
    return {int(p): (int(start.get(p, 0)), int(o)) for p, o in metadata["offsets_committed"].value.items()}


def build_raw_checks(table: SourceTable) -> list[dg.AssetChecksDefinition]:
    key = raw_key(table)

    def landed_by_last_run(context: dg.AssetCheckExecutionContext) -> LazySource | None:
        """The rows the last raw run landed: the log is append-only, so each batch is validated once, when it
        lands (the whole log when raw was never materialized through Dagster). Offset statistics let polars skip
        the older files."""
        source = delta_source(context.resources.lake.table(table.layout.raw))
        ranges = last_run_offsets(context, key)
        if source is None or ranges is None:
            return source
        landed = pl.lit(False)
        for partition, (start, end) in ranges.items():
            landed |= (pl.col("partition") == partition) & pl.col("offset").is_between(start, end, closed="left")
        return LazySource(source.frame.filter(landed))

    @dg.asset_check(
        asset=key, name="offsets_exactly_once", blocking=True,
        description="Every Kafka offset up to the committed one is in raw or the dead-letter table exactly once.",
    )
    def offsets_exactly_once(kafka: KafkaResource, lake: LakeResource) -> dg.AssetCheckResult:
        result = audit_topic_offsets(lake.table(table.layout.raw), lake.table(DEAD_LETTER_PATH),
                                     kafka.topic(table.name))
        if result is None:
            return dg.AssetCheckResult(passed=True, metadata={"note": "no raw table yet"})
        audit, committed = result.audit, result.committed
        return dg.AssetCheckResult(
            passed=audit.passed,
            metadata={
                "offsets_checked": audit.checked, "duplicates": audit.duplicates, "missing": audit.missing,
                "committed_offsets": dg.MetadataValue.json({str(p): o for p, o in committed.items()}),
                "failure_samples": dg.MetadataValue.json(audit.samples[:10]),
            },
        )

    @dg.asset_check(
        asset=key, name="no_incompatible_schema_change", blocking=True,
        description="No message was dead-lettered because a column's type changed in a way raw cannot widen.",
    )
    def no_incompatible_schema_change(kafka: KafkaResource, lake: LakeResource) -> dg.AssetCheckResult:
        dead = read_columns(lake.table(DEAD_LETTER_PATH), ["topic", "partition", "offset", "error"])
        bad = incompatible_changes(dead, kafka.topic(table.name)) if dead is not None else None
        count = 0 if bad is None else bad.num_rows
        samples = [] if bad is None else bad.slice(0, 5).select(["partition", "offset", "error"]).to_pylist()
        return dg.AssetCheckResult(
            passed=count == 0,
            metadata={"incompatible_messages": count, "failure_samples": dg.MetadataValue.json(samples)},
        )

    @dg.asset_check(
        asset=key, name=KAFKA_LAG_CHECK, blocking=False,
        description="Messages waiting in Kafka that raw has not committed (end offsets - committed offsets), per "
                    "partition; warns above the quality resource's kafka_lag_warn_messages.",
    )
    def kafka_lag_check(kafka: KafkaResource, lake: LakeResource, quality: QualityResource) -> dg.AssetCheckResult:
        topic = kafka.topic(table.name)
        warn = dg.AssetCheckSeverity.WARN
        try:
            ends = end_offsets(kafka.bootstrap(), [topic])[topic]
        except KafkaUnavailable as exc:
            return dg.AssetCheckResult(passed=False, severity=warn, metadata={"error": str(exc)})
        lag = kafka_lag(lake.table(table.layout.raw), topic, ends)
        total = sum(lag.values())
        return dg.AssetCheckResult(passed=total <= quality.kafka_lag_warn_messages, severity=warn, metadata={
            "lag_messages": total, "threshold_messages": quality.kafka_lag_warn_messages,
            "lag_by_partition": dg.MetadataValue.json({str(p): n for p, n in lag.items()}),
            "end_offsets": dg.MetadataValue.json({str(p): o for p, o in ends.items()}),
        })

    @dg.asset_check(
        asset=key, name=NEW_DEAD_LETTERS_CHECK, blocking=False,
        description="Warns when the last raw run of this topic dead-lettered messages, with a sample of the reasons "
                    "(the messages are kept in raw/_dead_letter).",
    )
    def no_new_dead_letters(context: dg.AssetCheckExecutionContext, kafka: KafkaResource,
                            lake: LakeResource) -> dg.AssetCheckResult:
        warn = dg.AssetCheckSeverity.WARN
        ranges = last_run_offsets(context, key)
        if ranges is None:
            return dg.AssetCheckResult(passed=True, severity=warn, metadata={"note": "raw not materialized yet"})
        dead = dead_letters_between(lake.table(DEAD_LETTER_PATH), kafka.topic(table.name), ranges)
        reasons = dead.group_by("error").aggregate([("offset", "count")]).sort_by(
            [("offset_count", "descending")]).to_pylist() if dead.num_rows else []
        sample = [{"partition": r["partition"], "offset": r["offset"], "reason": r["error"][:200]}
                  for r in dead.slice(0, SAMPLE_DEAD_LETTERS).to_pylist()]
        return dg.AssetCheckResult(passed=dead.num_rows == 0, severity=warn, metadata={
            "new_dead_letters": dead.num_rows,
            "offsets_of_last_run": dg.MetadataValue.json({p: list(r) for p, r in sorted(ranges.items())}),
            "reasons": dg.MetadataValue.json({r["error"][:200]: r["offset_count"] for r in reasons}),
            "sample": dg.MetadataValue.md(markdown_table(sample) if sample else "No new dead letters."),
        })

    pandera = [
        pandera_asset_check(key, raw_model(table), landed_by_last_run, name="pandera_schema",
                            required_resource_keys={"lake"}, rows=LAST_RUN_ROWS),
        pandera_asset_check(key, raw_images_model(table), landed_by_last_run, name="pandera_source_rules",
                            required_resource_keys={"lake"}, rows=LAST_RUN_ROWS),
    ]
    return [offsets_exactly_once, no_incompatible_schema_change, kafka_lag_check, no_new_dead_letters, *pandera]


DEAD_LETTER_CHECKS = [pandera_asset_check(
    DEAD_LETTER_KEY, dead_letter_model(),
    lambda context: delta_source(context.resources.lake.table(DEAD_LETTER_PATH)),
    name="pandera_schema", required_resource_keys={"lake"},
)]

RAW_CHECKS = [check for t in SOURCE_TABLES for check in build_raw_checks(t)]
