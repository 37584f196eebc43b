"""`curated/<table>` and `curated/<table>_history`: one multi-asset per source table, generated from the
registry. Glue only: the apply is `curate.storage.CuratedStore`; the asset reports what a batch did."""

import dagster as dg

from cardo_pipeline.curate.merge_on_read import file_summary
from cardo_pipeline.curate.storage import ApplyReport, CuratedLocations, CuratedStore
from cardo_pipeline.defs.automation import follows_upstream
from cardo_pipeline.defs.groups import CURATED
from cardo_pipeline.defs.keys import curated_history_key, curated_key, raw_key
from cardo_pipeline.defs.resources import EngineResource, LakeResource
from cardo_pipeline.ingest.delta_log import load_table
from cardo_pipeline.tables import SOURCE_TABLES, SourceTable


def curated_locations(lake: LakeResource, table: SourceTable) -> CuratedLocations:
    return CuratedLocations.in_lake(lake.root_uri(), table)


def _layout(table) -> dict:
    """Row count and the merge-on-read state a user watches: rows marked deleted wait for maintenance's purge."""
    if table is None:
        return {"dagster/row_count": 0}
    summary = file_summary(table)
    return {"dagster/row_count": summary["live_rows"], "data_files": summary["data_files"],
            "rows_marked_deleted": summary["rows_marked_deleted"],
            "files_with_deletion_vectors": summary["files_with_deletion_vectors"]}


def _common(report: ApplyReport, engine: str) -> dict[str, object]:
    return {
        "engine": engine,
        "raw_version_applied": report.raw_version if report.raw_version is not None else -1,
        "events_applied": report.events,
        "batches": report.batches,
        "keys_touched": report.keys_touched,
        "truncates_seen": len(report.truncates),
        "events_per_second": round(report.events / report.seconds, 1) if report.seconds else 0.0,
    }


def build_curated_assets(table: SourceTable) -> dg.AssetsDefinition:
    key = ", ".join(table.primary_key)
    current, history = curated_key(table), curated_history_key(table)

    def spec(asset_key: dg.AssetKey, description: str) -> dg.AssetSpec:
        return dg.AssetSpec(
            asset_key, deps=[raw_key(table)], group_name=CURATED, kinds={"delta"}, description=description,
            metadata={"primary_key": key}, tags={"cardo/layer": "curated"},
            automation_condition=follows_upstream(),
        )

    @dg.multi_asset(
        name=f"curated_{table.name}",
        specs=[
            spec(current, (
                f"Current state of `{table.name}`: one row per live {key}, the event with the highest sequence "
                "(LSN, then offset) whatever the arrival order; deletes and truncates remove rows, late events "
                "cannot bring them back; `_cardo_lsn`, `_cardo_offset`, `_cardo_source_ts` tell which event "
                "wrote the row. Change data feed on."
            )),
            spec(history, (
                f"SCD2 history of `{table.name}`: every version with valid_from / valid_to (sequence and source "
                "commit time) and is_current; a delete is a row of its own with is_deleted (dbt's convention), "
                "kept as the tombstone that stops late events. Change data feed on."
            )),
        ],
        can_subset=False,  # one apply writes both, each in its own commit with the raw version applied
    )
    def curated_tables(context: dg.AssetExecutionContext, lake: LakeResource, engine: EngineResource):
        locations = curated_locations(lake, table)
        chosen = engine.for_asset(current)  # one apply writes both tables: the current table's engine decides
        if chosen == "spark":
            from cardo_pipeline.spark.apply import apply_with_spark

            report = apply_with_spark(engine.spark(), table, locations, log=context.log.info)
        else:
            report = CuratedStore(table, locations).apply(log=context.log.info)
        current_table, history_table = load_table(locations.current), load_table(locations.history)
        yield dg.MaterializeResult(asset_key=current, metadata={
            **_common(report, chosen), **_layout(current_table),
            "delta_version": report.current_version if report.current_version is not None else -1,
            "rows_inserted": report.inserted, "rows_updated": report.updated, "rows_deleted": report.deleted,
        })
        yield dg.MaterializeResult(asset_key=history, metadata={
            **_common(report, chosen), **_layout(history_table),
            "delta_version": report.history_version if report.history_version is not None else -1,
            "history_rows_written": report.history_rows_written,
        })

    return curated_tables


CURATED_ASSETS = [build_curated_assets(t) for t in SOURCE_TABLES]
