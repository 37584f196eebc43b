"""Checks on every curated table, generated from the registry: the Pandera models of both tables and reconciliation
with the source database. That the current table agrees with its history (blocking) is checked by the apply itself
and declared on the curated multi-asset (`defs.curated.assets`): a Spark job launched through Dagster Pipes reports
it with its materializations."""


import dagster as dg

from cardo_pipeline.curate.models import current_model, history_model, history_values_model
from cardo_pipeline.defs.keys import curated_history_key, curated_key
from cardo_pipeline.defs.quality.pandera_checks import pandera_asset_check
from cardo_pipeline.defs.resources import KafkaResource, LakeResource, QualityResource, ServicingDatabase
from cardo_pipeline.quality.validate import delta_source
from cardo_pipeline.tables import SOURCE_TABLES, SourceTable

RECONCILE_CHECK = "reconciles_with_source"


def build_curated_checks(table: SourceTable) -> list[dg.AssetChecksDefinition]:
    def current(context: dg.AssetCheckExecutionContext):
        return delta_source(context.resources.lake.table(table.layout.curated))

    def history(context: dg.AssetCheckExecutionContext):
        return delta_source(context.resources.lake.table(table.layout.history))

    return [
        pandera_asset_check(curated_key(table), current_model(table), current, name="pandera_schema",
                            required_resource_keys={"lake"}),
        pandera_asset_check(curated_history_key(table), history_model(table), history, name="pandera_schema",
                            required_resource_keys={"lake"}),
        pandera_asset_check(curated_history_key(table), history_values_model(table), history,
                            name="pandera_source_rules", required_resource_keys={"lake"}),
        build_reconciliation_check(table),
    ]


def build_reconciliation_check(table: SourceTable) -> dg.AssetChecksDefinition:
    """Row count and checksum equal the source's, once raw has caught up with Kafka and Debezium with Postgres.

    When that cannot be known (no source reachable, Debezium or raw behind, the lake ahead of the source's snapshot)
    the check yields no result, so Dagster shows it skipped, and the reason goes to the run's log and to an
    observation on the asset. A multi-asset check with `can_subset` is what lets a check end without a result."""
    asset = curated_key(table)

    @dg.multi_asset_check(
        specs=[dg.AssetCheckSpec(
            RECONCILE_CHECK, asset=asset, blocking=True,
            description=(f"`{table.name}` in the lake equals the servicing database's: row count and an "
                         "order-independent checksum over the key and every business column. Skipped, with the "
                         "reason, when raw is behind Kafka, Debezium behind Postgres, or no source is reachable."),
        )],
        can_subset=True,
        name=f"reconcile_{table.name}_with_source",
    )
    def reconcile(context: dg.AssetCheckExecutionContext, kafka: KafkaResource, lake: LakeResource,
                  servicing_db: ServicingDatabase, quality: QualityResource):
        from cardo_pipeline.quality.reconcile import reconcile_with_source

        if not quality.reconcile_with_source:
            yield from _skipped(context, asset, "reconciliation with the source is switched off (quality resource)")
            return
        result = reconcile_with_source(
            table, conninfo=servicing_db.conninfo(), curated_uri=lake.table(table.layout.curated),
            raw_uri=lake.table(table.layout.raw), topic=kafka.topic(table.name), bootstrap=kafka.bootstrap(),
            wait_s=quality.reconcile_wait_seconds,
        )
        metadata = {
            "source_rows": result.source_rows if result.source_rows is not None else -1,
            "lake_rows": result.lake_rows if result.lake_rows is not None else -1,
            "source_checksum": result.source_checksum or "", "lake_checksum": result.lake_checksum or "",
            "reason": result.reason, "details": dg.MetadataValue.json(result.details),
        }
        if result.status == "skipped":
            yield from _skipped(context, asset, result.reason, metadata)
            return
        yield dg.AssetCheckResult(check_name=RECONCILE_CHECK, asset_key=asset, passed=result.passed,
                                  metadata=metadata)

    return reconcile


def _skipped(context: dg.AssetCheckExecutionContext, asset: dg.AssetKey, reason: str, metadata=None):
    context.log.warning(f"{RECONCILE_CHECK} on {asset.to_user_string()} skipped: {reason}")
    yield dg.AssetObservation(asset_key=asset, metadata={
        f"{RECONCILE_CHECK}/skipped": reason, **{f"{RECONCILE_CHECK}/{k}": v for k, v in (metadata or {}).items()}})


CURATED_CHECKS = [check for t in SOURCE_TABLES for check in build_curated_checks(t)]
