"""Asset keys, the same in every environment, from each registry entry's layout (`SourceTable.layout`)."""

from __future__ import annotations

import dagster as dg

from cardo_pipeline.tables import DEAD_LETTER_PATH, SourceTable

DEAD_LETTER_KEY = dg.AssetKey(list(DEAD_LETTER_PATH))


def topic_key(table: SourceTable) -> dg.AssetKey:
    return dg.AssetKey(list(table.layout.kafka))


def raw_key(table: SourceTable) -> dg.AssetKey:
    return dg.AssetKey(list(table.layout.raw))


def curated_key(table: SourceTable) -> dg.AssetKey:
    return dg.AssetKey(list(table.layout.curated))


def curated_history_key(table: SourceTable) -> dg.AssetKey:
    return dg.AssetKey(list(table.layout.history))


def iceberg_key(table: SourceTable) -> dg.AssetKey:
    return dg.AssetKey(list(table.layout.iceberg))


def reference_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["reference", name])


def features_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["features", name])


def model_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["models", name])
