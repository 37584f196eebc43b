"""Asset keys of the curated layer, the same in every environment."""

from __future__ import annotations

import dagster as dg

from cardo_pipeline.tables import SourceTable


def curated_key(table: SourceTable) -> dg.AssetKey:
    return dg.AssetKey(["curated", table.name])


def curated_history_key(table: SourceTable) -> dg.AssetKey:
    return dg.AssetKey(["curated", f"{table.name}_history"])
