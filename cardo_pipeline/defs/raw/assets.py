"""`raw/<table>`: one asset per source table, generated from the registry; each run lands every new message.

The asset is glue: it locates the raw and dead-letter tables through the lake resource, calls `ingest_topics`,
and reports offsets, lag, counts and Delta versions as metadata.
"""

import json

import dagster as dg

from cardo_pipeline.defs.groups import RAW
from cardo_pipeline.defs.keys import DEAD_LETTER_KEY, raw_key, topic_key
from cardo_pipeline.defs.raw.sensor import END_OFFSETS_TAG
from cardo_pipeline.defs.resources import EngineResource, KafkaResource, LakeResource
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.ingest.partition_workers import TopicIngest, ingest_topics
from cardo_pipeline.ingest.raw_ingest import DEFAULT_BATCH_MESSAGES, IngestReport
from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.tables import DEAD_LETTER_PATH, SOURCE_TABLES, SourceTable


class RawIngestConfig(dg.Config):
    max_batch_messages: int = DEFAULT_BATCH_MESSAGES  # bounds memory: one batch is decoded and committed at a time
    # Worker processes for a large backlog, one partition each (0: cores + 1); small backlogs stay in-process.
    partition_workers: int = 0


def _offsets(offsets: dict[int, int]) -> dg.MetadataValue:
    return dg.MetadataValue.json({str(p): o for p, o in sorted(offsets.items())})


def report_metadata(report: IngestReport, lag: int) -> dict[str, object]:
    return {
        "messages_consumed": report.consumed,
        "rows_landed": report.landed,
        "dead_lettered": report.dead_lettered,
        "batches": report.batches,
        "offsets_start": _offsets(report.start_offsets),
        "offsets_committed": _offsets(report.committed_offsets),
        "lag_messages": lag,
        "delta_version": report.raw_version if report.raw_version is not None else -1,
        "new_columns": dg.MetadataValue.json(report.new_columns),
        "events_per_second": round(report.consumed / report.seconds, 1) if report.seconds else 0.0,
    }


def requested_end_offsets(context: dg.AssetExecutionContext, topic: str) -> dict[int, int] | None:
    """The end offsets the sensor requested for `topic` (run tag END_OFFSETS_TAG); None: up to the end seen now."""
    raw = context.run.tags.get(END_OFFSETS_TAG)
    if not raw:
        return None
    requested = json.loads(raw).get(topic)
    return None if requested is None else {int(p): int(end) for p, end in requested.items()}


def build_raw_asset(table: SourceTable) -> dg.AssetsDefinition:
    @dg.asset(
        key=raw_key(table),
        deps=[topic_key(table)],
        group_name=RAW,
        kinds={"delta", "kafka"},
        description=(
            f"Append-only Debezium change log of `{table.name}`: one row per Kafka message (op, key, typed before/"
            "after, LSN, transaction id, source time, topic, partition, offset). The Kafka offsets are stored in "
            "the same Delta commit as the rows, so a run resumes exactly where the last commit ended."
        ),
        metadata={"primary_key": ", ".join(table.primary_key)},
        tags={"cardo/layer": "raw"},
    )
    def raw_table(
        context: dg.AssetExecutionContext, config: RawIngestConfig, kafka: KafkaResource, lake: LakeResource,
        engine: EngineResource,
    ) -> dg.MaterializeResult:
        topic = kafka.topic(table.name)
        job = TopicIngest(table, topic, lake.table(table.layout.raw), lake.table(DEAD_LETTER_PATH))
        target_end = requested_end_offsets(context, topic)
        chosen = engine.for_asset(context.asset_key)
        if chosen == "spark":
            from cardo_pipeline.spark.ingest import ingest_topic_with_spark

            report = ingest_topic_with_spark(engine.spark(), kafka.bootstrap(), table, topic, job.raw_uri,
                                             job.dead_letter_uri, target_end=target_end, log=context.log.info)
            workers = 1
        else:
            result = ingest_topics(
                kafka.bootstrap(), [job], workers=config.partition_workers or None,
                max_batch_messages=config.max_batch_messages,
                target_ends=None if target_end is None else {topic: target_end}, log=context.log.info,
            )
            report, workers = result.reports[topic], result.workers
        latest = end_offsets(kafka.bootstrap(), [topic])[topic]
        metadata = report_metadata(report, report.lag(latest))
        metadata["engine"] = chosen
        metadata["ingest_workers"] = workers
        metadata["dagster/row_count"] = OffsetTrackedTable(job.raw_uri).row_count()
        if report.dead_lettered:
            context.log_event(dg.AssetMaterialization(
                asset_key=DEAD_LETTER_KEY,
                description=f"{report.dead_lettered} messages of {topic} could not be decoded",
                metadata={"table": table.name, "dead_lettered": report.dead_lettered,
                          "delta_version": report.dead_letter_version},
            ))
        return dg.MaterializeResult(metadata=metadata)

    return raw_table


RAW_ASSETS = [build_raw_asset(t) for t in SOURCE_TABLES]

DEAD_LETTER_SPEC = dg.AssetSpec(
    DEAD_LETTER_KEY,
    deps=[raw_key(t) for t in SOURCE_TABLES],
    group_name=RAW,
    kinds={"delta"},
    description=(
        "Messages that could not be decoded (malformed JSON, unknown op, missing payload, undecodable or "
        "incompatible values): topic, partition, offset, key and value bytes, the reason and the time. Written by "
        "the raw assets in the same run, before the batch's offsets move; nothing is ever dropped."
    ),
)
