"""The benchmarks on small inputs: they run end to end on the real stack and report every field the issues ask
for. Their speed targets are checked by running them at full size (see the closing notes), not here."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from cardo_pipeline.bench import freshness
from cardo_pipeline.bench.apply import LOANS, TOPIC, _book_rows, _raw_table, bench_apply, build_book
from cardo_pipeline.bench.ingest import bench_ingest
from cardo_pipeline.curate.storage import CuratedStore
from cardo_pipeline.ingest import partition_workers
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable

INGEST_FIELDS = {"events", "mean_message_bytes", "consume_only_events_per_s", "ingest_events_per_s", "ratio",
                 "peak_rss_mb", "peak_rss_sum_mb"}
APPLY_FIELDS = {"rows", "changes", "apply_events_per_s", "naive_events_per_s", "speedup", "iceberg_events_per_s",
                "peak_rss_mb", "verified"}


@pytest.fixture
def on_test_stack(stack, test_env, monkeypatch):
    for name, value in test_env.items():
        monkeypatch.setenv(name, value)


def test_bench_ingest_lands_every_produced_event(on_test_stack, cardo_settings, monkeypatch):
    monkeypatch.setattr(partition_workers, "PARALLEL_MIN_BACKLOG", 0)  # the worker pool, as at full size
    said: list[str] = []
    result = bench_ingest(events=3000, workers=2, log=said.append)
    assert result.keys() >= INGEST_FIELDS
    assert result["events"] > 2000 and result["mean_message_bytes"] > 1000  # Debezium JSON with schemas
    assert result["ratio"] == pytest.approx(result["ingest_events_per_s"] / result["consume_only_events_per_s"],
                                            abs=0.01)
    # the tree of the ingest: this process and two workers, shared library pages once in peak_rss_mb only
    assert result["ingest_workers"] == 2
    assert 0 < result["peak_rss_mb"] < result["peak_rss_sum_mb"]
    # its topics are gone (each full-size run left ~0.4 GB per million events on the broker)
    prefix = said[0].split(" to ")[1].removesuffix(".public.*")
    admin = AdminClient({"bootstrap.servers": cardo_settings.kafka_bootstrap})
    left = [t for t in admin.list_topics(timeout=10).topics
            if t.startswith(prefix)]
    assert left == []


def test_bench_apply_is_verified_against_the_oracle():
    result = bench_apply(rows=5000, changes=1000, log=lambda _: None)
    assert result.keys() >= APPLY_FIELDS
    assert result["rows"] == 5000 and result["changes"] > 900
    assert result["verified"] is True
    assert result["speedup"] == pytest.approx(result["apply_events_per_s"] / result["naive_events_per_s"], rel=0.05)


def test_bench_freshness_sees_a_change_once_applied_and_not_the_row_it_replaced(tmp_path):
    locations, naive = build_book(tmp_path, 200, seed=3)  # curated loans with deletion vectors, as the apply keeps
    raw, store = OffsetTrackedTable(locations.raw), CuratedStore(LOANS, locations)
    loan = _book_rows(naive, np.array([5])).to_dicts()[0]
    for n in (1, 2):
        image = loan | {"servicer_notes": f"cardo freshness test {n}"}
        raw.append(_raw_table([{"op": "u", "key": '{"loan_id":5}', "before": None, "after": image,
                                "unchanged_toast": [], "source_lsn": 10_000 + n, "source_tx_id": n,
                                "snapshot": "false", "offset": n}]), TOPIC, {0: n + 1}, {})
        assert not freshness._visible(locations.current, 5, f"cardo freshness test {n}")
        store.apply()
        assert freshness._visible(locations.current, 5, f"cardo freshness test {n}")
    assert not freshness._visible(locations.current, 5, "cardo freshness test 1")  # marked deleted, not read


@pytest.mark.slow
def test_bench_checks_stay_within_the_stated_memory_bound():
    """The bound stated in ARCHITECTURE section 11 for the checking process beyond its imports: 1 GB plus 60 bytes
    a row (the narrow key columns checked across rows). Reading the 1.2M-row loans table whole, notes included,
    would take more than that."""
    from cardo_pipeline.bench.checks import bench_checks

    result = bench_checks(rows=1_200_000, changes=40_000, log=lambda _: None)
    assert result["passed"] and set(result["models"]) == {
        "CuratedLoans", "CuratedLoansHistory", "CuratedLoansHistoryValues"}
    assert result["models"]["CuratedLoans"]["rows_checked"] >= result["rows"]
    own = result["peak_rss_mb"] - result["baseline_rss_mb"]
    assert own < 1000 + 60 * result["rows"] / 2**20, result
