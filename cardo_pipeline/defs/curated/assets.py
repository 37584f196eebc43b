"""`curated/<table>` and `curated/<table>_history`: one multi-asset per source table, generated from the
registry. Glue only: the apply is `curate.storage.CuratedStore` (local engine) or the Spark engine's step
(`spark.pipes_steps`, in this process or as a spark-submit job under Dagster Pipes); the asset reports what a batch
did and whether the two tables agree (`current_agrees_with_history`), the same for every engine and launch."""

import dagster as dg

from cardo_pipeline.curate.storage import CuratedLocations, CuratedStore
from cardo_pipeline.defs.automation import follows_upstream
from cardo_pipeline.defs.groups import CURATED
from cardo_pipeline.defs.keys import curated_history_key, curated_key, raw_key
from cardo_pipeline.defs.resources import EngineResource, LakeResource
from cardo_pipeline.spark.pipes import outcome_results
from cardo_pipeline.spark.pipes_steps import CONSISTENCY_CHECK, CuratedStep, curated_outcome, run_step
from cardo_pipeline.tables import SOURCE_TABLES, SourceTable


def curated_locations(lake: LakeResource, table: SourceTable) -> CuratedLocations:
    return CuratedLocations.in_lake(lake.root_uri(), table)


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
        # Checked by the apply itself, wherever it ran (a spark-submit job reports it through Dagster Pipes)
        check_specs=[dg.AssetCheckSpec(
            CONSISTENCY_CHECK, asset=current, blocking=True,
            description=("The current table holds exactly the history's current, not deleted versions (same keys, "
                         "same values), and each key once."),
        )],
        can_subset=False,  # one apply writes both, each in its own commit with the raw version applied
    )
    def curated_tables(context: dg.AssetExecutionContext, lake: LakeResource, engine: EngineResource):
        step = CuratedStep.of(table.name, current.to_user_string(), history.to_user_string(),
                              curated_locations(lake, table))
        chosen = engine.for_asset(current)  # one apply writes both tables: the current table's engine decides
        if chosen == "spark" and engine.spark_launch() == "pipes":  # a spark-submit job applies and reports
            yield from engine.spark_launcher().launch(context, step)
            return
        if chosen == "spark":
            outcome = run_step(engine.spark(), step, launch="session", log=context.log.info)
        else:
            outcome = curated_outcome(step, CuratedStore(table, step.locations).apply(log=context.log.info), chosen)
        yield from outcome_results(outcome)

    return curated_tables


CURATED_ASSETS = [build_curated_assets(t) for t in SOURCE_TABLES]
