"""Raw ingestion against the real broker: exactly once, resumable, dead letters, schema evolution, the asset."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from cardo_pipeline.defs.keys import raw_key
from cardo_pipeline.defs.raw.assets import RAW_ASSETS
from cardo_pipeline.defs.raw.checks import RAW_CHECKS
from cardo_pipeline.defs.resources import EngineResource, KafkaResource, LakeResource, QualityResource
from cardo_pipeline.tables import TABLES_BY_NAME, Column
from cardo_pipeline_tests.raw_helpers import (
    audit_topic,
    delta_version,
    encode_changes,
    fresh_prefix,
    ingest_into,
    loan_row,
    produce_book,
    produce_raw,
    read_table,
)

pytestmark = pytest.mark.stack
LOANS = TABLES_BY_NAME["loans"]


def test_every_message_lands_exactly_once_in_small_commits_and_a_rerun_adds_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = fresh_prefix("once")
    expected = produce_book(kafka_bootstrap, prefix, loans=25, months=4)
    landed = 0
    for table in TABLES_BY_NAME:
        report = ingest_into(kafka_bootstrap, tmp_path, table, f"{prefix}.public.{table}", batch=300)
        assert report.consumed == report.landed + report.dead_lettered and report.dead_lettered == 0
        landed += report.landed
        audit, held = audit_topic(str(tmp_path), table, f"{prefix}.public.{table}")
        assert audit.passed, audit.samples
    assert landed == expected

    version = delta_version(f"{tmp_path}/raw/payments")
    again = ingest_into(kafka_bootstrap, tmp_path, "payments", f"{prefix}.public.payments")
    assert (again.consumed, again.batches) == (0, 0)
    assert delta_version(f"{tmp_path}/raw/payments") == version

    raw = read_table(f"{tmp_path}/raw/loans")
    ops = set(raw["op"].to_pylist())
    assert {"c", "u"} <= ops
    assert raw.schema.field("after").type.field("principal").type.scale == 2
    toasted = [t for t in raw["unchanged_toast"].to_pylist() if t]
    assert toasted and all(t == ["servicer_notes"] for t in toasted)


def test_bad_messages_go_to_the_dead_letter_table_with_their_reason(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = fresh_prefix("dlq")
    topic = f"{prefix}.public.loans"
    good = encode_changes(LOANS, prefix, [loan_row(1), loan_row(2)])
    envelope = json.loads(good[0])
    unknown_op = json.loads(good[0])
    unknown_op["payload"]["op"] = "x"
    bad_decimal = json.loads(good[0])
    bad_decimal["payload"]["after"]["principal"] = "not base64!"
    bad = [
        b"{this is not json",
        json.dumps(unknown_op).encode(),
        json.dumps({"schema": envelope["schema"]}).encode(),  # no payload
        json.dumps(bad_decimal).encode(),
    ]
    produce_raw(kafka_bootstrap, topic, [good[0], *bad, good[1]])

    report = ingest_into(kafka_bootstrap, tmp_path, "loans", topic)
    assert (report.consumed, report.landed, report.dead_lettered) == (6, 2, 4)
    dead = read_table(f"{tmp_path}/raw/_dead_letter").to_pylist()
    assert sorted(d["value"] for d in dead) == sorted(bad)
    assert all(d["topic"] == topic and d["error"] for d in dead)
    audit, held = audit_topic(str(tmp_path), "loans", topic)
    assert audit.passed and held == 6


def test_added_column_appears_as_nullable_and_incompatible_change_fails_its_check(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = fresh_prefix("evolve")
    topic = f"{prefix}.public.loans"
    produce_raw(kafka_bootstrap, topic, encode_changes(LOANS, prefix, [loan_row(1)]))
    # Postgres: ALTER TABLE loans ADD COLUMN risk_grade text; Debezium then sends the column in every event.
    widened = replace(LOANS, columns=(*LOANS.columns, Column("risk_grade", "text", True)))
    produce_raw(kafka_bootstrap, topic, encode_changes(widened, prefix, [loan_row(2, risk_grade="B")]))

    resources = {
        "kafka": KafkaResource(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix),
        "lake": LakeResource(root=str(tmp_path)),
        "quality": QualityResource(),
        "engine": EngineResource(),
    }
    definitions = dg.Definitions(assets=RAW_ASSETS, asset_checks=RAW_CHECKS, resources=resources)
    job = definitions.resolve_implicit_global_asset_job_def()
    first = job.execute_in_process(asset_selection=[raw_key(LOANS)])
    assert first.success
    after = read_table(f"{tmp_path}/raw/loans")["after"].to_pylist()
    assert sorted((a["loan_id"], a["risk_grade"]) for a in after) == [(1, None), (2, "B")]  # no row order in Delta

    # Postgres: ALTER TABLE loans ALTER COLUMN days_past_due TYPE text: raw cannot widen int32 to text.
    retyped = replace(LOANS, columns=tuple(
        Column(c.name, "text") if c.name == "days_past_due" else c for c in LOANS.columns
    ))
    produce_raw(kafka_bootstrap, topic, encode_changes(retyped, prefix, [loan_row(3, days_past_due="30+")]))
    second = job.execute_in_process(asset_selection=[raw_key(LOANS)], raise_on_error=False)
    checks = {
        e.event_specific_data.check_name: e.event_specific_data
        for e in second.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks["no_incompatible_schema_change"].passed is False
    assert checks["no_incompatible_schema_change"].metadata["incompatible_messages"].value == 1
    assert checks["offsets_exactly_once"].passed is True
    dead = read_table(f"{tmp_path}/raw/_dead_letter").to_pylist()
    assert len(dead) == 1 and "days_past_due" in dead[0]["error"]


def test_a_batch_ends_at_its_byte_bound_and_every_message_is_read_once(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cardo_pipeline.ingest import kafka_reader
    from cardo_pipeline.kafka_topics import end_offsets

    topic = f"{fresh_prefix('bytes')}.public.loans"
    produce_raw(kafka_bootstrap, topic, encode_changes(LOANS, "x", [loan_row(i) for i in range(1, 61)]))
    (partition, end), = [(p, e) for p, e in end_offsets(kafka_bootstrap, [topic])[topic].items() if e]
    assert end == 60
    target = kafka_reader.ReadTarget(topic, {partition: 0}, {partition: end})
    monkeypatch.setattr(kafka_reader, "CONSUME_MESSAGES", 4)  # the bound is checked between consume() calls

    whole = list(kafka_reader.read_batches(kafka_bootstrap, target, max_messages=1_000))
    assert [len(b) for b in whole] == [60]
    bound = whole[0].held_bytes // 6
    batches = list(kafka_reader.read_batches(kafka_bootstrap, target, max_messages=1_000, max_bytes=bound))

    assert [r.offset for b in batches for r in b] == list(range(60))
    assert all(b.held_bytes >= bound for b in batches[:-1])
    assert all(b.held_bytes < bound + 4 * max(len(v) for v in b.values) for b in batches)
    assert 5 <= len(batches) <= 7
