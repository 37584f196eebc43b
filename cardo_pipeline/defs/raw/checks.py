"""Blocking checks on every raw table, generated from the registry: exactly-once offsets and schema compatibility."""

from __future__ import annotations

import dagster as dg

from cardo_pipeline.defs.keys import raw_key
from cardo_pipeline.defs.resources import KafkaResource, LakeResource
from cardo_pipeline.ingest.audit import audit_topic_offsets, incompatible_changes, read_columns
from cardo_pipeline.tables import DEAD_LETTER_PATH, SOURCE_TABLES, SourceTable


def build_raw_checks(table: SourceTable) -> list[dg.AssetChecksDefinition]:
    key = raw_key(table)

    @dg.asset_check(
        asset=key, name="offsets_exactly_once", blocking=True,
        description="Every Kafka offset up to the committed one is in raw or the dead-letter table exactly once.",
    )
    def offsets_exactly_once(kafka: KafkaResource, lake: LakeResource) -> dg.AssetCheckResult:
        result = audit_topic_offsets(
            lake.table(table.layout.raw), lake.table(DEAD_LETTER_PATH), kafka.topic(table.name)
        )
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

    return [offsets_exactly_once, no_incompatible_schema_change]


RAW_CHECKS = [check for t in SOURCE_TABLES for check in build_raw_checks(t)]
