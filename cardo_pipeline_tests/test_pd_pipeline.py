"""Features, the PD model and its scores in Dagster runs on the real stack: a book through Kafka, raw and curated;
features as of each cutoff that a later change (stamped today or backdated) leaves untouched; a model logged and
registered in the stack's MLflow server as champion, a retrained one as challenger; scores from the champion."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from cardo_pipeline.cdc.encode import EnvelopeEncoder
from cardo_pipeline.curate.merge_on_read import read_live
from cardo_pipeline.defs.features.loans import (
    LOAN_FEATURES,
    LOAN_OUTCOMES,
    cutoff_of,
    cutoff_partitions,
    known_cutoff_partitions,
)
from cardo_pipeline.defs.keys import curated_history_key, curated_key, raw_key, reference_key
from cardo_pipeline.defs.models.pd import PD_MODEL, PD_SCORES
from cardo_pipeline.defs.resources import (
    LakeResource,
    PdModelResource,
    ServicingDatabase,
)
from cardo_pipeline.features.loan_features import KnownHistories, features_at
from cardo_pipeline.simulator.changes import RowChange, Transaction
from cardo_pipeline.simulator.history import simulated_histories
from cardo_pipeline.tables import SOURCE_TABLES, TABLES_BY_NAME
from cardo_pipeline_tests.raw_helpers import fresh_prefix, produce_book, produce_raw
from cardo_pipeline_tests.test_quality_checks import checks_of, definitions, meta

pytestmark = pytest.mark.stack
LOANS = TABLES_BY_NAME["loans"]
MODELLING = [LOAN_FEATURES, LOAN_OUTCOMES, PD_MODEL, PD_SCORES]


def _definitions(tmp_path: Path, bootstrap: str, prefix: str, dsn: str, tracking_uri: str,
                 model_name: str) -> dg.Definitions:
    # The book goes straight to Kafka, so the servicing database holds no truth for it: no oracle here (the demo
    # and `cardo bench model` measure against it).
    return definitions(tmp_path, bootstrap, prefix, dsn, reconcile_with_source=False, pd_settings=PdModelResource(
        tracking_uri=tracking_uri, registered_model=model_name, experiment=model_name, test_cutoffs=2,
        oracle_from_simulator=False))


def _upstream(graph) -> list[dg.AssetKey]:
    keys = [reference_key("postcode_nuts3"), reference_key("nuts_regions")]  # the postcodes' check reads both
    for table in SOURCE_TABLES:
        keys += [raw_key(table), curated_key(table), curated_history_key(table)]
    return keys


def _features(lake: Path, cutoff) -> pl.DataFrame:
    return pl.scan_delta(str(lake / "features" / "loan_features")).filter(
        pl.col("cutoff_date") == cutoff).collect().sort("loan_id")


def test_features_model_and_scores_in_dagster_runs(kafka_bootstrap: str, servicing_dsn: str,
                                                   mlflow_tracking_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    prefix = fresh_prefix("pd")
    produce_book(kafka_bootstrap, prefix, loans=1500, months=20, seed=5)
    model_name = f"cardo_pd_test_{uuid.uuid4().hex[:8]}"
    definitions = _definitions(tmp_path, kafka_bootstrap, prefix, servicing_dsn, mlflow_tracking_uri, model_name)
    job = definitions.resolve_implicit_global_asset_job_def()
    lake = tmp_path / "lake"
    with dg.instance_for_test() as instance:
        def run(selection, **kwargs) -> dg.ExecuteInProcessResult:
            return job.execute_in_process(instance=instance, asset_selection=selection, raise_on_error=False,
                                          **kwargs)

        assert run(_upstream(definitions.resolve_asset_graph())).success
        months = known_cutoff_partitions(LakeResource(root=str(lake)), cutoff_partitions())
        assert months[0] == "2024-01-01" and len(months) >= 18
        result = run(MODELLING, tags={"dagster/asset_partition_range_start": months[0],
                                      "dagster/asset_partition_range_end": months[-1]})
        assert result.success
        checks = checks_of(result)
        for asset in ("features/loan_features", "features/loan_default_outcomes", "models/pd_scores"):
            assert checks[(asset, "pandera_schema")].passed, asset
        materialized = {e.asset_key: {k: v.value for k, v in e.materialization.metadata.items()}
                        for e in result.get_asset_materialization_events()}

        # The model: both families compared, the best registered as the first champion, its plots inline.
        model = materialized[PD_MODEL]
        assert model["model_version"] == 1 and model["alias"] == "champion", model["decision"]
        assert model["auc"] > 0.8 and abs(model["gini"] - (2 * model["auc"] - 1)) < 1e-4
        assert 0 < model["brier"] < 0.1 and 0 < model["ks"] <= 1
        assert "logistic_regression" in model["models_compared"] and "hist_gradient_boosting" in model[
            "models_compared"]
        assert model["roc_curve"].startswith("![roc](data:image/png;base64,")
        assert model["calibration_plot"].startswith("![calibration](data:image/png;base64,")
        assert model["mlflow_run"].startswith(mlflow_tracking_uri)
        client = MlflowClient(tracking_uri=mlflow_tracking_uri)
        champion = client.get_model_version_by_alias(model_name, "champion")
        assert champion.version == "1"
        artifacts = {a.path for a in client.list_artifacts(champion.run_id, "plots")}
        assert artifacts == {"plots/roc.png", "plots/calibration.png"}
        run_data = client.get_run(champion.run_id).data
        assert run_data.metrics["auc"] == pytest.approx(model["auc"], abs=1e-5)
        assert {"brier", "ks", "gini", "log_loss", "cv_auc"} <= set(run_data.metrics)

        # Scores: every loan of every cutoff, from version 1, stable against training.
        scores = materialized[PD_SCORES]
        features_rows = materialized[LOAN_FEATURES]["dagster/row_count"]
        assert scores["dagster/row_count"] == features_rows and scores["model_version"] == 1
        assert scores["max_psi"] is not None and scores["max_psi"] >= 0
        stored = pl.read_delta(str(lake / "models" / "pd_scores"))
        assert stored.height == features_rows and stored["pd_12m"].is_between(0, 1).all()

        # A change after a cutoff, stamped today or backdated into the cutoff's month, leaves its features as they
        # were; the curated tables did take it.
        cutoff = cutoff_of(months[-6])
        before = _features(lake, cutoff)
        # The same book simulated in memory (what `cardo bench model` trains on) gives the same features as the
        # CDC path through Kafka, raw and curated.
        simulated = KnownHistories.from_histories(simulated_histories(loans=1500, months=20, seed=5).histories)
        postcodes = pl.read_delta(str(lake / "reference" / "postcode_nuts3"))
        assert_frame_equal(features_at(simulated, postcodes, cutoff), before, check_exact=False)
        victims = before["loan_id"].head(3).to_list()
        current = read_live(str(lake / "curated" / "loans"), columns=LOANS.column_names).filter(
            pl.col("loan_id").is_in(victims)).sort("loan_id")
        last_lsn = pl.read_delta(str(lake / "curated" / "loans_history"))["valid_from_lsn"].max()
        stamps = [datetime.now(UTC), datetime.now(UTC), datetime.combine(cutoff, datetime.min.time(), UTC)]
        encoder = EnvelopeEncoder(prefix, tables=[LOANS], start_lsn=last_lsn + 1_000_000)
        values = []
        for row, stamp in zip(current.to_dicts(), stamps, strict=True):
            changed = row | {"status": "defaulted", "days_past_due": 120, "interest_rate": Decimal("0.19900"),
                             "updated_at": stamp}
            txn = Transaction((RowChange("loans", "u", changed),), datetime.now(UTC))
            values += [m.value for m in encoder.encode_transaction(txn) if m.value is not None]
        produce_raw(kafka_bootstrap, LOANS.topic(prefix), values)
        assert run([raw_key(LOANS), curated_key(LOANS), curated_history_key(LOANS)]).success
        now = read_live(str(lake / "curated" / "loans"), columns=["loan_id", "status"]).filter(
            pl.col("loan_id").is_in(victims))
        assert set(now["status"]) == {"defaulted"}
        assert run([LOAN_FEATURES], partition_key=months[-6]).success
        assert _features(lake, cutoff).equals(before)

        # Retrained on the same features and outcomes, the new version does not beat the champion: challenger.
        again = run([PD_MODEL])
        assert again.success
        second = {k: v.value for k, v in again.get_asset_materialization_events()[0].materialization.metadata
                  .items()}
        assert second["model_version"] == 2 and second["alias"] == "challenger", second["decision"]
        assert "does not beat champion v1" in second["decision"]
        assert client.get_model_version_by_alias(model_name, "champion").version == "1"
        assert client.get_model_version_by_alias(model_name, "challenger").version == "2"
        assert meta(checks_of(again)[("models/pd_model", "auc_near_the_oracle")])["note"].startswith("no oracle")


def test_the_oracle_comes_from_the_simulators_truth_and_is_absent_without_it(servicing_dsn: str) -> None:
    import psycopg

    from cardo_pipeline.defs.models.pd import simulator_truth

    cutoff, loan_id = date(2031, 1, 31), 987_654_321  # far from any simulated book's loans and dates
    with psycopg.connect(servicing_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO simulator.loan_truth VALUES (%s, %s, %s) ON CONFLICT (loan_id, as_of_date) "
                     "DO UPDATE SET pd_12m = EXCLUDED.pd_12m", (loan_id, cutoff, 0.25))
    truth = simulator_truth(ServicingDatabase(dsn=servicing_dsn), [cutoff])
    assert truth.filter(pl.col("loan_id") == loan_id).rows() == [(loan_id, cutoff, 0.25)]
    unreachable = ServicingDatabase(dsn="host=127.0.0.1 port=9 dbname=servicing user=cardo connect_timeout=1")
    assert simulator_truth(unreachable, [cutoff]) is None  # production: no simulator, no oracle
