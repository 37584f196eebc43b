"""Partition workers against the real broker: several processes append to the same raw tables, each committing
only its partition's offsets; every message lands exactly once, and the report is the one a single process
gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardo_pipeline.ingest import partition_workers
from cardo_pipeline.ingest.partition_workers import TopicIngest, ingest_topics
from cardo_pipeline.tables import SOURCE_TABLES
from cardo_pipeline_tests.raw_helpers import audit_topic, fresh_prefix, produce_book, read_table

pytestmark = pytest.mark.stack


def _jobs(prefix: str, lake: Path) -> list[TopicIngest]:
    return [TopicIngest(t, f"{prefix}.public.{t.name}", f"{lake}/raw/{t.name}", f"{lake}/raw/_dead_letter")
            for t in SOURCE_TABLES]


def test_partition_workers_land_every_message_exactly_once(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partition_workers, "PARALLEL_MIN_BACKLOG", 0)  # a small book, so the test stays quick
    prefix = fresh_prefix("workers")
    expected = produce_book(kafka_bootstrap, prefix, loans=30, months=4)
    workers_lake, single_lake = tmp_path / "workers", tmp_path / "single"

    result = ingest_topics(kafka_bootstrap, _jobs(prefix, workers_lake), workers=2, max_batch_messages=200)
    assert result.workers == 2 and len(result.worker_peak_rss_mb) == 2  # both processes took partitions
    single = ingest_topics(kafka_bootstrap, _jobs(prefix, single_lake), workers=1, max_batch_messages=200)
    assert single.workers == 1

    assert sum(r.landed for r in result.reports.values()) == expected
    for job in _jobs(prefix, workers_lake):
        report, alone = result.reports[job.topic], single.reports[job.topic]
        assert report.consumed == report.landed == alone.landed and report.dead_lettered == 0
        assert report.committed_offsets == report.target_offsets == alone.committed_offsets
        assert len(report.committed_offsets) == 2  # the topics have two partitions: both were worked on
        audit, _ = audit_topic(str(workers_lake), job.table.name, job.topic)
        assert audit.passed, audit.samples
        columns = ["partition", "offset", "op", "after"]
        rows = read_table(job.raw_uri).select(columns).sort_by([("partition", "ascending"), ("offset", "ascending")])
        single_rows = read_table(f"{single_lake}/raw/{job.table.name}").select(columns).sort_by(
            [("partition", "ascending"), ("offset", "ascending")])
        assert rows.equals(single_rows)

    again = ingest_topics(kafka_bootstrap, _jobs(prefix, workers_lake), workers=2)
    assert sum(r.consumed for r in again.reports.values()) == 0 and again.workers == 1
