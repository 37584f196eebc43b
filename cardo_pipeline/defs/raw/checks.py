"""Blocking checks on every raw table, generated from the registry: exactly-once offsets and schema compatibility."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds

from cardo_pipeline.defs.raw.keys import DEAD_LETTER_KEY, raw_key
from cardo_pipeline.defs.resources import KafkaResource, LakeResource
from cardo_pipeline.ingest.audit import audit_offsets, incompatible_changes
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable, load_table
from cardo_pipeline.tables import SOURCE_TABLES, SourceTable


def _columns(uri: str, columns: list[str], topic: str | None = None) -> pa.Table | None:
    table = load_table(uri)
    if table is None:
        return None
    expression = None if topic is None else ds.field("topic") == topic
    return table.to_pyarrow_dataset().to_table(columns=columns, filter=expression)


def build_raw_checks(table: SourceTable) -> list[dg.AssetChecksDefinition]:
    key = raw_key(table)

    @dg.asset_check(
        asset=key, name="offsets_exactly_once", blocking=True,
        description="Every Kafka offset up to the committed one is in raw or the dead-letter table exactly once.",
    )
    def offsets_exactly_once(kafka: KafkaResource, lake: LakeResource) -> dg.AssetCheckResult:
        topic = kafka.topic(table.name)
        raw_uri = lake.location("raw", table.name)
        raw = _columns(raw_uri, ["partition", "offset"])
        if raw is None:
            return dg.AssetCheckResult(passed=True, metadata={"note": "no raw table yet"})
        dead = _columns(lake.location(*DEAD_LETTER_KEY.path), ["partition", "offset"], topic)
        held = pa.concat_tables([raw, dead.cast(raw.schema)]) if dead is not None else raw
        partitions = sorted(set(held["partition"].to_pylist()))
        committed = OffsetTrackedTable(raw_uri).next_offsets(topic, partitions)
        audit = audit_offsets(held, committed)
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
        dead = _columns(lake.location(*DEAD_LETTER_KEY.path), ["topic", "partition", "offset", "error"])
        bad = incompatible_changes(dead, kafka.topic(table.name)) if dead is not None else None
        count = 0 if bad is None else bad.num_rows
        samples = [] if bad is None else bad.slice(0, 5).select(["partition", "offset", "error"]).to_pylist()
        return dg.AssetCheckResult(
            passed=count == 0,
            metadata={"incompatible_messages": count, "failure_samples": dg.MetadataValue.json(samples)},
        )

    return [offsets_exactly_once, no_incompatible_schema_change]


RAW_CHECKS = [check for t in SOURCE_TABLES for check in build_raw_checks(t)]
