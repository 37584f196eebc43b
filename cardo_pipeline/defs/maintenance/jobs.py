"""`table_maintenance`: nightly compaction and vacuum of every raw and curated Delta table, compaction of the
Iceberg mirrors' position delete files and expiry of old Iceberg snapshots. What it did is recorded as an
observation on each asset, so the UI shows it beside the data."""

import dagster as dg

from cardo_pipeline.curate.maintenance import (
    DEFAULT_RETENTION,
    DEFAULT_TARGET_FILE_BYTES,
    expire_iceberg_snapshots,
    maintain_delta_table,
)
from cardo_pipeline.curate.storage import CuratedStore
from cardo_pipeline.defs.curated.assets import curated_locations
from cardo_pipeline.defs.keys import DEAD_LETTER_KEY, curated_history_key, curated_key, iceberg_key, raw_key
from cardo_pipeline.defs.resources import IcebergResource, LakeResource
from cardo_pipeline.tables import SOURCE_TABLES


class MaintenanceConfig(dg.Config):
    target_file_mb: int = DEFAULT_TARGET_FILE_BYTES // 2**20
    retention_days: int = DEFAULT_RETENTION.days  # versions (time travel) and Iceberg snapshots kept
    # Keys deleted longer ago than this are forgotten with their history (a late event for one then counts as
    # new); unset, tombstones stay as long as the history. At least 7.
    tombstone_retention_days: int | None = None


@dg.op(description="Compact and vacuum every raw and curated Delta table; compact the Iceberg mirrors whose delete "
                   "files pile up and expire their old snapshots.")
def maintain_tables(context: dg.OpExecutionContext, config: MaintenanceConfig, lake: LakeResource,
                    iceberg: IcebergResource) -> None:
    from datetime import timedelta

    if config.retention_days < 1 or config.target_file_mb < 1:
        raise dg.Failure(f"retention_days and target_file_mb must be at least 1, got {config.retention_days} and "
                         f"{config.target_file_mb}")
    if config.tombstone_retention_days is not None and config.tombstone_retention_days < 7:
        raise dg.Failure(f"tombstone_retention_days must be at least 7 (or unset: kept as long as the history), got "
                         f"{config.tombstone_retention_days}")
    retention = timedelta(days=config.retention_days)
    if config.tombstone_retention_days is not None:
        for table in SOURCE_TABLES:  # before compaction, which then folds the deletion vectors they leave
            forgotten = CuratedStore(table, curated_locations(lake, table)).expire_tombstones(
                timedelta(days=config.tombstone_retention_days))
            context.log_event(dg.AssetObservation(asset_key=curated_history_key(table), metadata={
                "maintenance/deleted_keys_forgotten": forgotten,
                "maintenance/tombstone_retention_days": config.tombstone_retention_days}))
    keys = [DEAD_LETTER_KEY] + [k for t in SOURCE_TABLES for k in (raw_key(t), curated_key(t), curated_history_key(t))]
    for key in keys:
        report = maintain_delta_table(lake.table(key.path), target_file_bytes=config.target_file_mb * 2**20,
                                      retention=retention)
        if report is not None:
            context.log_event(dg.AssetObservation(asset_key=key, metadata={
                "maintenance/files_before": report.files_before, "maintenance/files_after": report.files_after,
                "maintenance/files_compacted": report.files_compacted,
                "maintenance/files_vacuumed": report.files_vacuumed,
                "maintenance/files_purged_of_deleted_rows": report.files_purged, "delta_version": report.version,
            }))
    from pyiceberg.exceptions import NoSuchTableError  # see defs/iceberg/assets.py: not at load time

    from cardo_pipeline.mirror.iceberg import compact_mirror
    from cardo_pipeline.mirror.position_deletes import ConcurrentChangeError

    catalog = iceberg.catalog()
    for table in SOURCE_TABLES:
        try:
            mirrored = catalog.load_table(iceberg.identifier(table.name))
        except NoSuchTableError:
            continue
        metadata: dict[str, int | float | bool] = {}
        try:
            compaction = compact_mirror(mirrored)
            metadata = {"maintenance/compacted": compaction.compacted,
                        "maintenance/position_deletes_before": compaction.position_deletes_before,
                        "maintenance/delete_files_before": compaction.delete_files_before,
                        "maintenance/data_files_before": compaction.data_files_before,
                        "maintenance/data_files_after": compaction.data_files_after,
                        "maintenance/compaction_seconds": round(compaction.seconds, 2)}
        except ConcurrentChangeError as error:  # a mirror run committed first: its rows win, compact next time
            context.log.warning(f"{iceberg.identifier(table.name)}: compaction skipped, {error}")
            mirrored = catalog.load_table(iceberg.identifier(table.name))
        expired = expire_iceberg_snapshots(mirrored, retention=retention)
        context.log_event(dg.AssetObservation(asset_key=iceberg_key(table),
                                              metadata={**metadata, "maintenance/snapshots_expired": expired}))


@dg.job(description="Nightly: compaction, vacuum and checkpoints of the Delta tables; compaction of the Iceberg "
                    "mirrors' delete files and snapshot expiry.",
        tags={"cardo/maintenance": "tables"})
def table_maintenance() -> None:
    maintain_tables()


TABLE_MAINTENANCE_SCHEDULE = dg.ScheduleDefinition(
    job=table_maintenance, cron_schedule="0 3 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs table_maintenance at 03:00 UTC, when the servicing day is quiet.",
)
