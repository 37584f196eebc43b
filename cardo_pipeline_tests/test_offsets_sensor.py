"""The Kafka offsets sensor against the real broker and a real Dagster instance."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from cardo_pipeline.defs.keys import curated_history_key, curated_key, iceberg_key, raw_key
from cardo_pipeline.defs.raw.assets import build_raw_asset
from cardo_pipeline.defs.raw.sensor import END_OFFSETS_TAG, RAW_TABLES_TAG, SENSOR_NAME, build_kafka_offsets_sensor
from cardo_pipeline.defs.resources import EngineResource, KafkaResource, LakeResource
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.tables import SOURCE_TABLES, TABLES_BY_NAME
from cardo_pipeline_tests.raw_helpers import encode_changes, fresh_prefix, ingest_into, loan_row, produce_raw

SENSOR = build_kafka_offsets_sensor(list(SOURCE_TABLES), interval_seconds=15, follows=lambda table: [
    curated_key(table), curated_history_key(table), iceberg_key(table)])


def _tick(instance: dg.DagsterInstance, resources: dict, cursor: str | None = None):
    return SENSOR.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor))


@pytest.mark.stack
def test_requests_exactly_the_raw_assets_with_new_messages_and_what_follows_them(kafka_bootstrap: str,
                                                                                tmp_path: Path) -> None:
    prefix = fresh_prefix("sensor")
    produce_raw(kafka_bootstrap, f"{prefix}.public.loans",
                encode_changes(TABLES_BY_NAME["loans"], prefix, [loan_row(1), loan_row(2), loan_row(3)]))
    resources = {"kafka": KafkaResource(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix),
                 "lake": LakeResource(root=str(tmp_path))}
    with dg.DagsterInstance.ephemeral() as instance:
        first = _tick(instance, resources)
        assert len(first.run_requests) == 1
        request = first.run_requests[0]
        loans = TABLES_BY_NAME["loans"]
        # one run takes the change all the way: raw, the curated tables, the mirror
        assert request.asset_selection == [raw_key(loans), curated_key(loans), curated_history_key(loans),
                                           iceberg_key(loans)]
        assert request.tags[RAW_TABLES_TAG] == "loans"
        cursor = json.loads(first.cursor)
        assert sum(cursor[f"{prefix}.public.loans"].values()) == 3

        # The same offsets give the same run key: a repeated tick cannot ingest a range twice.
        assert _tick(instance, resources, first.cursor).run_requests[0].run_key == request.run_key

        # A run materializing the table's curated assets (from the UI, say) is in flight: loans waits for it
        elsewhere = DagsterRun(job_name="__ASSET_JOB", status=DagsterRunStatus.STARTED,
                               asset_selection=frozenset({curated_key(loans)}))
        instance.add_run(elsewhere)
        waiting = _tick(instance, resources, first.cursor)
        assert not waiting.run_requests and "in flight for ['loans']" in waiting.skip_message
        instance.delete_run(elsewhere.run_id)

        ingest_into(kafka_bootstrap, tmp_path, "loans", f"{prefix}.public.loans")
        caught_up = _tick(instance, resources, first.cursor)
        assert not caught_up.run_requests and "no new messages" in caught_up.skip_message

        produce_raw(kafka_bootstrap, f"{prefix}.public.loans",
                    encode_changes(TABLES_BY_NAME["loans"], prefix, [loan_row(4)]))
        later = _tick(instance, resources, caught_up.cursor)
        assert later.run_requests and later.run_requests[0].run_key != request.run_key


@pytest.mark.stack
def test_the_run_lands_exactly_the_offset_range_the_sensor_requested(kafka_bootstrap: str, tmp_path: Path,
                                                                     engine_name: str) -> None:
    engine = engine_name
    prefix = fresh_prefix(f"range{engine}")
    loans = TABLES_BY_NAME["loans"]
    topic = f"{prefix}.public.loans"
    produce_raw(kafka_bootstrap, topic, encode_changes(loans, prefix, [loan_row(i) for i in range(1, 4)]))
    resources = {"kafka": KafkaResource(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix),
                 "lake": LakeResource(root=str(tmp_path)), "engine": EngineResource(default=engine)}
    with dg.DagsterInstance.ephemeral() as instance:
        tick = _tick(instance, resources)
        requested = json.loads(tick.run_requests[0].tags[END_OFFSETS_TAG])
        assert sum(requested[topic].values()) == 3
        # more messages arrive between the tick and the run: the run lands what the sensor saw, no more
        produce_raw(kafka_bootstrap, topic, encode_changes(loans, prefix, [loan_row(i) for i in range(4, 6)]))
        result = dg.materialize([build_raw_asset(loans)], resources=resources, instance=instance,
                                tags=tick.run_requests[0].tags)
        assert result.success
        metadata = result.asset_materializations_for_node(result.all_node_events[0].node_name)[0].metadata
        assert metadata["engine"].value == engine and metadata["messages_consumed"].value == 3
        assert metadata["lag_messages"].value == 2
        raw = OffsetTrackedTable(str(tmp_path / "raw" / "loans"))
        assert raw.row_count() == 3
        later = _tick(instance, resources, tick.cursor)
        assert later.run_requests  # the rest is the next run's
        assert json.loads(later.run_requests[0].tags[END_OFFSETS_TAG])[topic] != requested[topic]


def test_a_dead_broker_gives_a_skip_reason_naming_it_well_inside_the_tick_limit(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        resources = {"kafka": KafkaResource(bootstrap_servers=f"127.0.0.1:{port}"),
                     "lake": LakeResource(root=str(tmp_path))}
        started = time.monotonic()
        with dg.DagsterInstance.ephemeral() as instance:
            result = _tick(instance, resources)
        elapsed = time.monotonic() - started
    assert not result.run_requests
    assert f"127.0.0.1:{port}" in result.skip_message and "cardo stack up" in result.skip_message
    assert elapsed < 30, f"the tick took {elapsed:.1f} s"


def test_sensor_is_registered_running_by_default() -> None:
    assert SENSOR.name == SENSOR_NAME
    assert SENSOR.default_status == dg.DefaultSensorStatus.RUNNING
    assert SENSOR.minimum_interval_seconds == 15
