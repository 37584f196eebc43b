"""`iceberg/<table>`: the curated current state mirrored into Iceberg, one asset per registry table, with a
blocking check that the mirror equals Delta after every run. Glue only: see `mirror.iceberg`.

pyiceberg is imported when an Iceberg step runs, not when the code location loads: every run process loads the
location, and pyiceberg is half a second of its start-up (the freshness of the curated tables waits for two
run starts)."""

from typing import TYPE_CHECKING

import dagster as dg

from cardo_pipeline.curate.storage import current_schema
from cardo_pipeline.defs.automation import follows_upstream
from cardo_pipeline.defs.groups import ICEBERG
from cardo_pipeline.defs.keys import curated_key, iceberg_key
from cardo_pipeline.defs.quality.pandera_checks import pandera_asset_check
from cardo_pipeline.defs.resources import IcebergResource, LakeResource
from cardo_pipeline.mirror.models import mirror_model
from cardo_pipeline.tables import SOURCE_TABLES, SourceTable

if TYPE_CHECKING:
    from cardo_pipeline.mirror.iceberg import IcebergMirror


def mirror_for(table: SourceTable, iceberg: IcebergResource, lake: LakeResource) -> "IcebergMirror":
    from cardo_pipeline.mirror.iceberg import IcebergMirror

    return IcebergMirror(iceberg.catalog(), iceberg.identifier(table.name), lake.table(table.layout.curated),
                         table, current_schema(table))


def build_iceberg_asset(table: SourceTable) -> dg.AssetsDefinition:
    @dg.asset(
        key=iceberg_key(table),
        deps=[curated_key(table)],
        group_name=ICEBERG,
        kinds={"iceberg"},
        description=(
            f"`curated/{table.name}` mirrored into Iceberg: each run reads the Delta change data feed since the "
            "version last mirrored and applies it in one Iceberg snapshot (the changed keys' rows deleted by "
            "position delete files, their new rows appended, the Delta version recorded as the table property "
            "cardo.delta_version). The maintenance job folds the delete files back into the data."
        ),
        metadata={"primary_key": ", ".join(table.primary_key)},
        tags={"cardo/layer": "iceberg"},
        automation_condition=follows_upstream(),
    )
    def iceberg_table(context: dg.AssetExecutionContext, iceberg: IcebergResource,
                      lake: LakeResource) -> dg.MaterializeResult:
        report = mirror_for(table, iceberg, lake).sync()
        context.log.info(f"{report.identifier}: Delta {report.delta_version_before} -> {report.delta_version}, "
                         f"{report.keys_changed} keys changed in {report.seconds:.1f} s")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": report.rows,
            "iceberg_table": report.identifier,
            "snapshot_id": str(report.snapshot_id) if report.snapshot_id is not None else "",
            "delta_version_mirrored": report.delta_version if report.delta_version is not None else -1,
            "keys_changed": report.keys_changed,
            "rows_appended": report.rows_appended,
            "rows_deleted_by_position": report.rows_deleted_by_position,
            "delete_files_written": report.delete_files_written,
            "position_deletes": report.position_deletes,  # in the table until the next compaction
            "delete_files": report.delete_files,
            "full_copy": report.full_copy,
            "events_per_second": round(report.keys_changed / report.seconds, 1) if report.seconds else 0.0,
        })

    @dg.asset_check(
        asset=iceberg_table, name="matches_delta", blocking=True,
        description="The Iceberg table holds exactly the rows of the Delta version it says it mirrors.",
    )
    def matches_delta(iceberg: IcebergResource, lake: LakeResource) -> dg.AssetCheckResult:
        from cardo_pipeline.mirror.compare import compare_mirror

        result = compare_mirror(mirror_for(table, iceberg, lake))
        return dg.AssetCheckResult(passed=result.passed, metadata={
            "delta_version": result.delta_version if result.delta_version is not None else -1,
            "delta_rows": result.delta_rows, "iceberg_rows": result.iceberg_rows,
            "only_in_delta": result.only_in_delta, "only_in_iceberg": result.only_in_iceberg,
            "differing": result.differing, "failure_samples": dg.MetadataValue.json(result.samples),
        })

    def mirror_table(context: dg.AssetCheckExecutionContext):
        from cardo_pipeline.mirror.models import IcebergTableSource

        iceberg = context.resources.iceberg
        catalog = iceberg.catalog()
        if not catalog.table_exists(iceberg.identifier(table.name)):
            return None
        return IcebergTableSource(catalog.load_table(iceberg.identifier(table.name)))

    schema_check = pandera_asset_check(iceberg_key(table), mirror_model(table), mirror_table, name="pandera_schema",
                                       required_resource_keys={"iceberg"})
    return dg.Definitions(assets=[iceberg_table], asset_checks=[matches_delta, schema_check])


ICEBERG_DEFS = dg.Definitions.merge(*(build_iceberg_asset(t) for t in SOURCE_TABLES))
