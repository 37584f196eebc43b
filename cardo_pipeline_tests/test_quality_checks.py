"""The quality checks in Dagster runs against the real stack: bad data goes in through the real path (a
Debezium-shaped message produced to Kafka, an UPDATE in Postgres captured by Debezium) and the checks fail with the
metadata a user reads, clean data passes, a failed blocking check stops its downstream assets in the same run, and
the lag, dead-letter and reconciliation checks report what they should."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from cardo_pipeline.cdc.encode import EnvelopeEncoder
from cardo_pipeline.definitions import defs
from cardo_pipeline.defs.curated.checks import RECONCILE_CHECK
from cardo_pipeline.defs.keys import curated_key, iceberg_key, raw_key
from cardo_pipeline.defs.raw.checks import KAFKA_LAG_CHECK, NEW_DEAD_LETTERS_CHECK
from cardo_pipeline.defs.resources import (
    EngineResource,
    IcebergResource,
    KafkaResource,
    LakeResource,
    MartsResource,
    PdModelResource,
    QualityResource,
    ServicingDatabase,
    dbt_cli,
)
from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.simulator.changes import RowChange, Transaction
from cardo_pipeline.tables import TABLES_BY_NAME
from cardo_pipeline_tests.raw_helpers import encode_changes, fresh_prefix, loan_row, produce_raw

pytestmark = pytest.mark.stack
LOANS = TABLES_BY_NAME["loans"]


def definitions(tmp_path: Path, bootstrap: str, prefix: str, dsn: str, pd_settings: PdModelResource | None = None,
                engine: EngineResource | None = None, marts: MartsResource | None = None,
                **quality) -> dg.Definitions:
    """The real code location's assets and checks, with resources pointing at this test's topics and lake (and,
    for tests that run the PD model, at their own MLflow model name)."""
    code_location = defs()
    return dg.Definitions(
        assets=code_location.assets, asset_checks=code_location.asset_checks, jobs=code_location.jobs,
        sensors=code_location.sensors, schedules=code_location.schedules, executor=code_location.executor,
        resources={
        "kafka": KafkaResource(bootstrap_servers=bootstrap, topic_prefix=prefix),
        "lake": LakeResource(root=str(tmp_path / "lake")),
        "iceberg": IcebergResource(catalog_uri=f"sqlite:///{tmp_path}/catalog.db",
                                   warehouse=str(tmp_path / "warehouse")),
        "servicing_db": ServicingDatabase(dsn=dsn),
        "quality": QualityResource(**quality),
        "pd_settings": pd_settings or PdModelResource(oracle_from_simulator=False),
        "engine": engine or EngineResource(),
        "marts": marts or MartsResource(database=str(tmp_path / "marts.duckdb")),
        "dbt": dbt_cli(),
    })


def run_loans(definitions: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    job = definitions.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, raise_on_error=False,
                                  asset_selection=[raw_key(LOANS), curated_key(LOANS), iceberg_key(LOANS),
                                                   dg.AssetKey(["curated", "loans_history"])])


def checks_of(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}


def meta(check: dg.AssetCheckEvaluation) -> dict:
    return {k: v.value for k, v in check.metadata.items()}


def test_an_out_of_range_message_fails_the_checks_and_stops_the_mirror(kafka_bootstrap: str, servicing_dsn: str,
                                                                        tmp_path: Path) -> None:
    prefix = fresh_prefix("quality")
    encoder = EnvelopeEncoder(prefix, tables=[LOANS])  # one encoder: the update's LSN follows the inserts'

    def changes(op: str, rows: list[dict]) -> list[bytes]:
        txn = Transaction(tuple(RowChange("loans", op, row) for row in rows), datetime(2024, 5, 1, tzinfo=UTC))
        return [m.value for m in encoder.encode_transaction(txn) if m.value is not None]

    produce_raw(kafka_bootstrap, LOANS.topic(prefix), changes("c", [loan_row(i) for i in (1, 2, 3)]))
    closed_port = "host=127.0.0.1 port=9 dbname=servicing user=cardo connect_timeout=1"  # no source to reconcile
    defs_ = definitions(tmp_path, kafka_bootstrap, prefix, closed_port)
    with dg.instance_for_test() as instance:
        clean = run_loans(defs_, instance)
        assert clean.success
        checks = checks_of(clean)
        for name in ("raw/loans:pandera_schema", "raw/loans:pandera_source_rules", "curated/loans:pandera_schema",
                     "curated/loans_history:pandera_schema", "curated/loans_history:pandera_source_rules",
                     "iceberg/loans:pandera_schema"):
            asset, check = name.split(":")
            assert checks[(asset, check)].passed, name
        assert meta(checks[("curated/loans", "pandera_schema")])["rows_checked"] == 3
        assert meta(checks[("iceberg/loans", "pandera_schema")])["rows_checked"] == 3
        # No source reachable: reconciliation is skipped (no result, so Dagster shows it skipped), never passed.
        assert ("curated/loans", RECONCILE_CHECK) not in checks
        observed = [e.asset_observation_data.asset_observation for e in clean.all_events
                    if e.event_type_value == "ASSET_OBSERVATION"]
        reasons = [o.metadata[f"{RECONCILE_CHECK}/skipped"].value for o in observed
                   if f"{RECONCILE_CHECK}/skipped" in o.metadata]
        assert reasons and "9" in reasons[0], reasons

        bad = loan_row(2, interest_rate=Decimal("1.50000"), days_past_due=-5)
        produce_raw(kafka_bootstrap, LOANS.topic(prefix), changes("u", [bad]))
        failed = run_loans(defs_, instance)
        assert not failed.success
        checks = checks_of(failed)
        raw_rules = checks[("raw/loans", "pandera_source_rules")]
        assert not raw_rules.passed and raw_rules.severity == dg.AssetCheckSeverity.WARN
        assert meta(raw_rules)["rows_checked"] == 1  # only what this run landed
        curated = checks[("curated/loans", "pandera_schema")]
        assert not curated.passed and curated.severity == dg.AssetCheckSeverity.ERROR
        metadata = meta(curated)
        assert metadata["model"] == "CuratedLoans" and metadata["rows_checked"] == 3
        assert metadata["failure_count"] == 2 and metadata["failing_rows"] == 1
        assert metadata["failures_by_column"] == {"interest_rate": 1, "days_past_due": 1}
        assert "| 2 |" in metadata["failing_rows_sample"] and "in_range(0, 1)" in metadata["failing_rows_sample"]
        # The blocking check stopped the mirror in the same run; the history (not downstream) was written.
        materialized = {e.asset_key for e in failed.get_asset_materialization_events()}
        assert curated_key(LOANS) in materialized and iceberg_key(LOANS) not in materialized
        stopped = [e.user_message for e in instance.all_logs(failed.run_id) if e.step_key == "iceberg__loans"]
        assert any("failed: ['curated__loans_pandera_schema']" in message for message in stopped), stopped


def test_lag_and_dead_letter_checks_warn_with_what_waits_and_why(kafka_bootstrap: str, servicing_dsn: str,
                                                               tmp_path: Path) -> None:
    prefix = fresh_prefix("qualitydlq")
    topic = LOANS.topic(prefix)
    produce_raw(kafka_bootstrap, topic, [b"{not json", *encode_changes(LOANS, prefix, [loan_row(1)])])
    defs_ = definitions(tmp_path, kafka_bootstrap, prefix, servicing_dsn, kafka_lag_warn_messages=2,
                        reconcile_with_source=False)
    with dg.instance_for_test() as instance:
        first = run_loans(defs_, instance)
        dead = checks_of(first)[("raw/loans", NEW_DEAD_LETTERS_CHECK)]
        assert not dead.passed and dead.severity == dg.AssetCheckSeverity.WARN
        assert meta(dead)["new_dead_letters"] == 1 and len(meta(dead)["reasons"]) == 1
        assert meta(dead)["sample"].startswith("| partition | offset | reason |")

        produce_raw(kafka_bootstrap, topic, encode_changes(LOANS, prefix, [loan_row(i) for i in range(10, 15)]))
        monitor = defs_.resolve_job_def("quality_monitoring").execute_in_process(instance=instance)
        lag = checks_of(monitor)[("raw/loans", KAFKA_LAG_CHECK)]
        assert not lag.passed and lag.severity == dg.AssetCheckSeverity.WARN
        assert meta(lag)["lag_messages"] == 5 and meta(lag)["threshold_messages"] == 2
        assert checks_of(monitor)[("raw/_dead_letter", "pandera_schema")].passed

        second = run_loans(defs_, instance)
        assert second.success
        assert checks_of(second)[("raw/loans", NEW_DEAD_LETTERS_CHECK)].passed  # nothing new this run
        assert meta(checks_of(second)[("raw/loans", KAFKA_LAG_CHECK)])["lag_messages"] == 0


def _wait_for_debezium(bootstrap: str, topic: str, at_least: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(end_offsets(bootstrap, [topic])[topic].values()) < at_least:
        assert time.monotonic() < deadline, f"Debezium did not publish {at_least} messages to {topic}"
        time.sleep(0.5)


def test_a_negative_rate_set_in_postgres_fails_the_curated_check_and_reconciliation_holds(
        kafka_bootstrap: str, servicing_dsn: str, tmp_path: Path) -> None:
    topic = LOANS.topic("servicing")
    before = sum(end_offsets(kafka_bootstrap, [topic])[topic].values())
    loan_id = 9_100_000 + int(time.time()) % 100_000
    with psycopg.connect(servicing_dsn, autocommit=True) as conn:
        columns = LOANS.column_names
        row = loan_row(loan_id)
        conn.execute(f"INSERT INTO public.loans ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                     [row[c] for c in columns])
        conn.execute("UPDATE public.loans SET interest_rate = -0.02 WHERE loan_id = %s", [loan_id])
    _wait_for_debezium(kafka_bootstrap, topic, before + 2)
    defs_ = definitions(tmp_path, kafka_bootstrap, "servicing", servicing_dsn, reconcile_wait_seconds=30)
    with dg.instance_for_test() as instance:
        result = run_loans(defs_, instance)
    checks = checks_of(result)
    curated = checks[("curated/loans", "pandera_schema")]
    assert not curated.passed
    assert meta(curated)["failures_by_rule"] == {"in_range(0, 1)": 1}
    assert f"| {loan_id} |" in meta(curated)["failing_rows_sample"]
    assert not checks[("raw/loans", "pandera_source_rules")].passed
    # The lake holds what Postgres holds, the bad rate included: reconciliation passes where the contract fails.
    reconciled = checks[("curated/loans", RECONCILE_CHECK)]
    assert reconciled.passed, meta(reconciled)
    assert meta(reconciled)["source_rows"] == meta(reconciled)["lake_rows"] > 0
    assert iceberg_key(LOANS) not in {e.asset_key for e in result.get_asset_materialization_events()}
    with psycopg.connect(servicing_dsn, autocommit=True) as conn:  # leave the shared database within contract
        conn.execute("DELETE FROM public.loans WHERE loan_id = %s", [loan_id])


def test_a_lake_that_differs_from_postgres_fails_reconciliation_and_stops_the_mirror(
        kafka_bootstrap: str, servicing_dsn: str, tmp_path: Path) -> None:
    """Loans that Postgres never held, produced to a topic that lands in raw/loans: every caught-up condition holds
    (Debezium's slot, raw against Kafka, curated against raw), so the check compares, and fails."""
    prefix = fresh_prefix("reconcile")
    encoder = EnvelopeEncoder(prefix, tables=[LOANS], start_lsn=4096)  # older than anything the source wrote
    txn = Transaction(tuple(RowChange("loans", "c", loan_row(i)) for i in (981_001, 981_002)),
                      datetime(2024, 5, 1, tzinfo=UTC))
    produce_raw(kafka_bootstrap, LOANS.topic(prefix),
                [m.value for m in encoder.encode_transaction(txn) if m.value is not None])
    defs_ = definitions(tmp_path, kafka_bootstrap, prefix, servicing_dsn)
    with psycopg.connect(servicing_dsn) as conn:
        source_rows = conn.execute("SELECT count(*) FROM public.loans").fetchone()[0]
    with dg.instance_for_test() as instance:
        result = run_loans(defs_, instance)
    reconciled = checks_of(result)[("curated/loans", RECONCILE_CHECK)]
    assert not reconciled.passed and reconciled.severity == dg.AssetCheckSeverity.ERROR
    metadata = meta(reconciled)
    assert (metadata["lake_rows"], metadata["source_rows"]) == (2, source_rows)
    assert "row counts differ" in metadata["reason"] and metadata["source_checksum"] != metadata["lake_checksum"]
    assert iceberg_key(LOANS) not in {e.asset_key for e in result.get_asset_materialization_events()}


def test_a_curated_table_not_updated_within_its_bound_fails_its_freshness_check(
        kafka_bootstrap: str, servicing_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = fresh_prefix("fresh")
    produce_raw(kafka_bootstrap, LOANS.topic(prefix), encode_changes(LOANS, prefix, [loan_row(1)]))
    monkeypatch.setenv("CARDO_FRESHNESS_HOURS", str(2 / 3600))  # two seconds
    defs_ = definitions(tmp_path, kafka_bootstrap, prefix, servicing_dsn, reconcile_with_source=False)
    with dg.instance_for_test() as instance:
        fresh = checks_of(run_loans(defs_, instance))[("curated/loans", "freshness_check")]
        assert fresh.passed and fresh.severity == dg.AssetCheckSeverity.WARN
        time.sleep(3)
        job = dg.define_asset_job("freshness", selection=dg.AssetSelection.checks(
            dg.AssetCheckKey(curated_key(LOANS), "freshness_check")))
        stale_run = dg.Definitions(assets=defs_.assets, asset_checks=defs_.asset_checks, jobs=[job],
                                   resources=defs_.resources, executor=defs_.executor
                                   ).resolve_job_def("freshness").execute_in_process(instance=instance)
    stale = checks_of(stale_run)[("curated/loans", "freshness_check")]
    assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN
    assert "dagster/last_updated_timestamp" in stale.metadata
