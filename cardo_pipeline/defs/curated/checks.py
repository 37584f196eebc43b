"""Blocking checks on every curated table, generated from the registry."""

from __future__ import annotations

import dagster as dg

from cardo_pipeline.curate.consistency import compare_current_with_history
from cardo_pipeline.defs.curated.assets import curated_locations
from cardo_pipeline.defs.keys import curated_key
from cardo_pipeline.defs.resources import LakeResource
from cardo_pipeline.tables import SOURCE_TABLES, SourceTable


def build_curated_checks(table: SourceTable) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset=curated_key(table), name="current_agrees_with_history", blocking=True,
        description=("The current table holds exactly the history's current, not deleted versions (same keys, same "
                     "values), and each key once."),
    )
    def current_agrees_with_history(lake: LakeResource) -> dg.AssetCheckResult:
        result = compare_current_with_history(table, curated_locations(lake, table))
        return dg.AssetCheckResult(
            passed=result.passed,
            metadata={
                "rows_compared": result.compared, "only_in_current": result.only_in_current,
                "only_in_history": result.only_in_history, "differing": result.differing,
                "duplicate_keys": result.duplicate_keys,
                "failure_samples": dg.MetadataValue.json(result.samples),
            },
        )

    return [current_agrees_with_history]


CURATED_CHECKS = [check for t in SOURCE_TABLES for check in build_curated_checks(t)]
