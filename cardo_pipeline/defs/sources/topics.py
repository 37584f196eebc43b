"""Observations of the CDC topics: end offsets per partition (the topic's data version) and the source row count.

Nothing here consumes a message; the observation is cheap enough to run on every sensor tick.
"""

from __future__ import annotations

import json

import dagster as dg
import psycopg

from cardo_pipeline.defs.groups import SOURCES
from cardo_pipeline.defs.keys import topic_key
from cardo_pipeline.defs.resources import KafkaResource, ServicingDatabase
from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.tables import SOURCE_TABLES, SourceTable


def _source_row_count(db: ServicingDatabase, table: str) -> int | None:
    try:
        with psycopg.connect(db.conninfo(), connect_timeout=3) as conn:
            return conn.execute(f'SELECT count(*) FROM public."{table}"').fetchone()[0]
    except psycopg.Error:
        return None  # the topic is the asset; a source database we cannot reach only loses this figure


def build_topic_observation(table: SourceTable) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=topic_key(table),
        group_name=SOURCES,
        description=f"Debezium change events of servicing `public.{table.name}` ({table.description})",
        metadata={"primary_key": ", ".join(table.primary_key), "columns": ", ".join(table.column_names)},
        tags={"dagster/storage_kind": "kafka"},
    )
    def observe_topic(kafka: KafkaResource, servicing_db: ServicingDatabase) -> dg.ObserveResult:
        topic = kafka.topic(table.name)
        offsets = end_offsets(kafka.bootstrap(), [topic])[topic]
        rows = _source_row_count(servicing_db, table.name)
        metadata: dict[str, object] = {
            "topic": topic,
            "partitions": len(offsets),
            "end_offsets": dg.MetadataValue.json({str(p): o for p, o in offsets.items()}),
            "messages_total": sum(offsets.values()),
        }
        if rows is not None:
            metadata["source_row_count"] = rows
        return dg.ObserveResult(
            data_version=dg.DataVersion(json.dumps(offsets, sort_keys=True)), metadata=metadata
        )

    return observe_topic


TOPIC_ASSETS = [build_topic_observation(t) for t in SOURCE_TABLES]

defs = dg.Definitions(assets=TOPIC_ASSETS)
