"""`raw/<table>`: one asset per source table, generated from the registry; each run lands every new message.

The asset is glue: it locates the raw and dead-letter tables through the lake resource, calls `ingest_topics` (the
local engine) or runs the Spark engine's step (`spark.pipes_steps`: in this process, or as a spark-submit job under
Dagster Pipes), and reports offsets, lag, counts and Delta versions as metadata, the same keys for every engine.
"""

import json

import dagster as dg

from cardo_pipeline.defs.groups import RAW
from cardo_pipeline.defs.keys import DEAD_LETTER_KEY, raw_key, topic_key
from cardo_pipeline.defs.raw.sensor import END_OFFSETS_TAG
from cardo_pipeline.defs.resources import EngineResource, KafkaResource, LakeResource
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.ingest.partition_workers import TopicIngest, ingest_topics
from cardo_pipeline.ingest.raw_ingest import DEFAULT_BATCH_MESSAGES
from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.spark.pipes import outcome_results
from cardo_pipeline.spark.pipes_steps import RawStep, StepOutcome, raw_metadata, run_step
from cardo_pipeline.tables import DEAD_LETTER_PATH, SOURCE_TABLES, SourceTable


class RawIngestConfig(dg.Config):
    max_batch_messages: int = DEFAULT_BATCH_MESSAGES  # bounds memory: one batch is decoded and committed at a time
    # Worker processes for a large backlog, one partition each (0: cores + 1); small backlogs stay in-process.
    partition_workers: int = 0


def requested_end_offsets(context: dg.AssetExecutionContext, topic: str) -> dict[int, int] | None:
    """The end offsets the sensor requested for `topic` (run tag END_OFFSETS_TAG); None: up to the end seen now."""
    raw = context.run.tags.get(END_OFFSETS_TAG)
    if not raw:
        return None
    requested = json.loads(raw).get(topic)
    return None if requested is None else {int(p): int(end) for p, end in requested.items()}


def _value(result: dg.MaterializeResult, name: str) -> int:
    value = (result.metadata or {}).get(name)
    return int(getattr(value, "value", value) or 0)


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
            step = RawStep(table.name, context.asset_key.to_user_string(), topic, kafka.bootstrap(), job.raw_uri,
                           job.dead_letter_uri, target_end=target_end)
            if engine.spark_launch() == "pipes":  # a spark-submit job lands the range and reports what it did
                (result,) = [r for r in engine.spark_launcher().launch(context, step)
                             if isinstance(r, dg.MaterializeResult)]
            else:
                (result,) = outcome_results(run_step(engine.spark(), step, launch="session", log=context.log.info))
        else:
            ingested = ingest_topics(
                kafka.bootstrap(), [job], workers=config.partition_workers or None,
                max_batch_messages=config.max_batch_messages,
                target_ends=None if target_end is None else {topic: target_end}, log=context.log.info,
            )
            report = ingested.reports[topic]
            metadata = raw_metadata(report, end_offsets(kafka.bootstrap(), [topic])[topic],
                                    OffsetTrackedTable(job.raw_uri).row_count(), "local", ingested.workers)
            (result,) = outcome_results(StepOutcome({context.asset_key.to_user_string(): metadata}))
        dead_lettered = _value(result, "dead_lettered")
        if dead_lettered:
            context.log_event(dg.AssetMaterialization(
                asset_key=DEAD_LETTER_KEY,
                description=f"{dead_lettered} messages of {topic} could not be decoded",
                metadata={"table": table.name, "dead_lettered": dead_lettered,
                          "delta_version": _value(result, "dead_letter_version")},
            ))
        return result

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
