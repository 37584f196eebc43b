"""Asset keys of the raw layer, the same in every environment."""

from __future__ import annotations

import dagster as dg

from cardo_pipeline.tables import SourceTable

DEAD_LETTER_KEY = dg.AssetKey(["raw", "_dead_letter"])


def raw_key(table: SourceTable) -> dg.AssetKey:
    return dg.AssetKey(["raw", table.name])
