"""Table maintenance: files with many rows marked deleted rewritten without them, small files compacted, files
no version needs any more vacuumed, old Iceberg snapshots expired. Run by the scheduled `table_maintenance` job;
nothing here changes a row.

Raw tables get a commit per Kafka batch and curated tables one per apply, so files stay small between runs;
compaction rewrites them with dataChange=false, which readers of the change data feed skip. Vacuum keeps a week
of versions by default: time travel and the Iceberg mirror read the feed of recent versions (the mirror copies
everything again if its last version is gone, so a shorter retention costs time, never rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from deltalake import DeltaTable

from cardo_pipeline.curate.merge_on_read import MergeOnReadTable, supports, writer_properties
from cardo_pipeline.ingest.delta_log import load_table

DEFAULT_TARGET_FILE_BYTES = 128 * 1024 * 1024
DEFAULT_RETENTION = timedelta(days=7)
DEFAULT_PURGE_SHARE = 0.1  # a file is rewritten once a tenth of its rows are marked deleted


@dataclass
class DeltaMaintenance:
    uri: str
    files_before: int = 0
    files_after: int = 0
    files_compacted: int = 0
    files_vacuumed: int = 0
    files_purged: int = 0  # rewritten without the rows their deletion vectors mark
    version: int | None = None


def maintain_delta_table(uri: str, *, target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES,
                         retention: timedelta = DEFAULT_RETENTION,
                         min_deleted_share: float = DEFAULT_PURGE_SHARE) -> DeltaMaintenance | None:
    """Purge deletion vectors, compact, vacuum and checkpoint one table (None when it does not exist yet)."""
    table = load_table(uri)
    if table is None:
        return None
    report = DeltaMaintenance(uri, files_before=len(table.file_uris()))
    merge_on_read_layout = supports(table)
    if merge_on_read_layout:  # files whose rows are largely marked deleted are rewritten without them
        merge_on_read = MergeOnReadTable(table)
        merge_on_read.sweep_staging()
        report.files_purged = merge_on_read.purge(min_deleted_share)
        table = DeltaTable(uri)
    metrics = table.optimize.compact(target_size=target_file_bytes,
                                     writer_properties=writer_properties() if merge_on_read_layout else None)
    report.files_compacted = int(metrics.get("numFilesRemoved", 0))
    report.files_vacuumed = len(table.vacuum(retention_hours=int(retention.total_seconds() // 3600),
                                             dry_run=False, enforce_retention_duration=False))
    table.create_checkpoint()  # readers replay the log from here, not from version 0
    table = DeltaTable(uri)
    report.files_after, report.version = len(table.file_uris()), table.version()
    return report


def expire_iceberg_snapshots(iceberg_table, *, retention: timedelta = DEFAULT_RETENTION) -> int:
    """Expire snapshots older than the retention (the current one always stays); returns how many went."""
    cutoff = datetime.now(UTC) - retention
    current = iceberg_table.current_snapshot()
    old = [s.snapshot_id for s in iceberg_table.snapshots()
           if s.timestamp_ms < cutoff.timestamp() * 1000 and (current is None or s.snapshot_id != current.snapshot_id)]
    if old:
        iceberg_table.maintenance.expire_snapshots().by_ids(old).commit()
    return len(old)
