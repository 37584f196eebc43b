"""`models/pd_model` (trained, tracked and registered in MLflow, champion or challenger) and `models/pd_scores` (the
champion's PD of every active loan at every cutoff). Glue around `cardo_pipeline.model`."""


import base64
import tempfile
from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import psycopg

from cardo_pipeline.defs.features.loans import (
    LOAN_FEATURES,
    LOAN_OUTCOMES,
    LOAN_SNAPSHOTS,
    cutoff_of,
    known_cutoff_partitions,
    write_cutoffs,
)
from cardo_pipeline.defs.groups import MODELS
from cardo_pipeline.defs.keys import model_key
from cardo_pipeline.defs.quality.pandera_checks import markdown_table, pandera_asset_check
from cardo_pipeline.defs.resources import LakeResource, PdModelResource, ServicingDatabase
from cardo_pipeline.model.scores import PSI_SHIFTED, distribution, pd_scores_model, score_features
from cardo_pipeline.quality.validate import delta_source

PD_MODEL = model_key("pd_model")
PD_SCORES = model_key("pd_scores")
RETRAIN_JOB = "retrain_pd_model"
MONTHLY_JOB = "monthly_features_and_scores"


def png_markdown(path: Path, title: str) -> str:
    """An image the Dagster UI shows inline in a markdown metadata entry."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def simulator_truth(servicing_db: ServicingDatabase, cutoffs: list) -> pl.DataFrame | None:
    """The simulator's true 12-month PDs at the cutoffs, or None where there is no simulator (production)."""
    try:
        with psycopg.connect(servicing_db.conninfo(), connect_timeout=5) as conn:
            if conn.execute("SELECT to_regclass('simulator.loan_truth')").fetchone()[0] is None:
                return None
            rows = conn.execute("SELECT loan_id, as_of_date, pd_12m FROM simulator.loan_truth "
                                "WHERE as_of_date = ANY(%s)", (cutoffs,)).fetchall()
    except psycopg.OperationalError:
        return None
    return pl.DataFrame(rows, schema={"loan_id": pl.Int64, "as_of_date": pl.Date, "pd_12m": pl.Float64},
                        orient="row")


def _metrics_table(result) -> str:
    rows = [{"model": family, **{k: round(v, 4) for k, v in metrics.items() if k in ("auc", "gini", "ks", "brier",
                                                                                    "log_loss")},
             "cv_auc": round(next(m.cv_auc for m in result.candidates if m.family == family), 4),
             "chosen": "yes" if family == result.chosen.family else ""}
            for family, metrics in result.test_metrics.items()]
    if result.oracle:
        rows.append({"model": "oracle (true PD)", "auc": round(result.oracle["oracle_auc"], 4)})
    return markdown_table(rows)


@dg.asset(
    key=PD_MODEL, group_name=MODELS, kinds={"scikitlearn", "mlflow"}, deps=[LOAN_FEATURES, LOAN_OUTCOMES],
    tags={"cardo/layer": "models"},
    description="The probability of default within 12 months: regularised logistic regression and histogram "
                "gradient boosting, hyperparameters cross-validated (folds keep a loan's months together), "
                "calibrated, the best by cross-validated AUC; trained on the older labelled cutoffs and tested on "
                "the newest ones. Logged and registered in MLflow as `cardo_pd`; the new version becomes `champion` "
                "only if it beats the current champion on the same out-of-time test set, else `challenger`.",
)
def pd_model_asset(context: dg.AssetExecutionContext, lake: LakeResource, pd_settings: PdModelResource,
                   servicing_db: ServicingDatabase) -> dg.MaterializeResult:
    from cardo_pipeline.model.registry import log_and_register
    from cardo_pipeline.model.training import TrainingDataError, labelled_features, train_pd_model

    features = pl.read_delta(lake.table(LOAN_FEATURES.path))
    outcomes = pl.read_delta(lake.table(LOAN_OUTCOMES.path))
    labelled = labelled_features(features, outcomes)
    truth = None
    if pd_settings.oracle_from_simulator:
        truth = simulator_truth(servicing_db, sorted(labelled["cutoff_date"].unique().to_list()))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = train_pd_model(labelled, truth=truth, plots_dir=Path(tmp), test_cutoffs=pd_settings.test_cutoffs,
                                    search_max_rows=pd_settings.search_max_rows)
        except TrainingDataError as exc:
            raise dg.Failure(str(exc)) from exc
        registration = log_and_register(result, pd_settings.tracking(), name=pd_settings.registered_model,
                                        experiment=pd_settings.experiment,
                                        tags={"dagster.run_id": context.run_id})
        images = {name: png_markdown(path, name) for name, path in result.plots.items()}
    context.log.info(registration.decision)
    metrics = result.metrics
    metadata: dict[str, object] = {
        "model_version": registration.version, "alias": registration.alias, "decision": registration.decision,
        "mlflow_run": dg.MetadataValue.url(registration.run_url),
        "mlflow_model": dg.MetadataValue.url(registration.model_url),
        "family": result.chosen.family, "best_params": dg.MetadataValue.json(result.chosen.best_params),
        **{name: round(float(metrics[name]), 5) for name in ("auc", "gini", "ks", "brier", "log_loss")},
        "cv_auc": round(result.chosen.cv_auc, 5),
        "train_rows": result.split.train.height, "test_rows": result.split.test.height,
        "train_cutoffs": f"{result.split.train_cutoffs[0]}..{result.split.train_cutoffs[-1]}",
        "test_cutoffs": f"{result.split.test_cutoffs[0]}..{result.split.test_cutoffs[-1]}",
        "fit_seconds": round(sum(m.fit_seconds for m in result.candidates), 1),
        "models_compared": dg.MetadataValue.md(_metrics_table(result)),
        "calibration": dg.MetadataValue.md(markdown_table(result.calibration.round(5).to_dict("records"))),
        "roc_curve": dg.MetadataValue.md(images["roc"]),
        "calibration_plot": dg.MetadataValue.md(images["calibration"]),
    }
    if result.oracle:
        metadata |= {"oracle_auc": round(result.oracle["oracle_auc"], 5),
                     "auc_over_oracle": round(result.oracle["auc_over_oracle"], 4),
                     "oracle_coverage": round(result.oracle["oracle_coverage"], 4)}
    if registration.previous_champion_auc is not None:
        metadata["champion_auc_on_this_test_set"] = round(registration.previous_champion_auc, 5)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(asset=PD_MODEL, name="auc_near_the_oracle", blocking=False,
                description="On simulator data: the model's out-of-time AUC is at least `oracle_min_ratio` (0.95) "
                            "times the AUC of the simulator's true PDs on the same test loans. Passes with a note "
                            "where there is no oracle.")
def auc_near_the_oracle(context: dg.AssetCheckExecutionContext, pd_settings: PdModelResource) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(PD_MODEL)
    values = {k: v.value for k, v in (event.asset_materialization.metadata if event else {}).items()}
    if "oracle_auc" not in values:
        return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"note": "no oracle (no simulator truth): nothing to compare with"})
    ratio = values["auc"] / values["oracle_auc"]
    return dg.AssetCheckResult(passed=ratio >= pd_settings.oracle_min_ratio, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"auc": values["auc"], "oracle_auc": values["oracle_auc"],
                                         "ratio": round(ratio, 4), "threshold": pd_settings.oracle_min_ratio})


MONTHLY_SCHEDULE = "monthly_features_and_scores_schedule"


def build_monthly_schedule(job, cutoffs_def: dg.MonthlyPartitionsDefinition) -> dg.ScheduleDefinition:
    first = cutoffs_def.get_first_partition_key()

    @dg.schedule(name=MONTHLY_SCHEDULE, job=job, cron_schedule="0 4 2 * *", execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="On the 2nd of each month: the month just ended (features, loan snapshots, outcomes "
                             "known so far, scores). Skips, saying why, while the servicing data has not reached the "
                             "month's end (a source that stopped, or a simulated book that ends earlier).")
    def monthly_schedule(context: dg.ScheduleEvaluationContext, lake: LakeResource):
        scheduled = context.scheduled_execution_time.date()
        partition = (scheduled.replace(day=1) - timedelta(days=1)).replace(day=1).isoformat()
        if partition < first:
            return dg.SkipReason(f"no whole month since the first cutoff's ({first}) yet")
        try:
            known = known_cutoff_partitions(lake, cutoffs_def)
        except dg.Failure as exc:
            return dg.SkipReason(str(exc))
        if partition not in known:
            last = f"the last it has passed is {cutoff_of(known[-1])}" if known else "it has passed none"
            return dg.SkipReason(f"the servicing data has not reached the cutoff {cutoff_of(partition)} ({last}): "
                                 "nothing to build yet")
        return dg.RunRequest(run_key=partition, partition_key=partition)

    return monthly_schedule


def build_pd_defs(cutoffs_def: dg.MonthlyPartitionsDefinition) -> dg.Definitions:
    @dg.asset(
        key=PD_SCORES, group_name=MODELS, kinds={"delta", "mlflow"}, partitions_def=cutoffs_def,
        backfill_policy=dg.BackfillPolicy.single_run(), deps=[LOAN_FEATURES, PD_MODEL],
        tags={"cardo/layer": "models"},
        description="The 12-month PD and risk grade of every loan active at a cutoff, from the registered model's "
                    "`champion` (loaded by alias from MLflow); the score distribution per cutoff and its population "
                    "stability index (PSI) against the champion's training scores.",
    )
    def pd_scores(context: dg.AssetExecutionContext, lake: LakeResource,
                  pd_settings: PdModelResource) -> dg.MaterializeResult:
        from cardo_pipeline.model.registry import RegistryError, load_champion, score_reference

        cutoffs = sorted(cutoff_of(key) for key in context.partition_keys)
        features = pl.scan_delta(lake.table(LOAN_FEATURES.path)).filter(pl.col("cutoff_date").is_in(cutoffs)).collect()
        missing = sorted(set(cutoffs) - set(features["cutoff_date"].unique().to_list()))
        if missing:
            raise dg.Failure(f"features/loan_features has no rows for {len(missing)} cutoff(s) from {missing[0]}: "
                             "materialize those partitions first")
        try:
            champion = load_champion(pd_settings.tracking(), pd_settings.registered_model)
        except RegistryError as exc:
            raise dg.Failure(str(exc)) from exc
        scores = score_features(features, champion.model, champion.version)
        version = write_cutoffs(scores, lake.table(PD_SCORES.path), cutoffs)
        by_cutoff = distribution(scores, score_reference(pd_settings.tracking(), champion.run_id))
        psis = [d["psi"] for d in by_cutoff.values() if d["psi"] is not None]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": scores.height, "delta_version": version, "model_version": champion.version,
            "mlflow_run_id": champion.run_id, "cutoffs": f"{cutoffs[0]}..{cutoffs[-1]} ({len(cutoffs)})",
            "mean_pd": round(float(scores["pd_12m"].mean()), 5),
            "max_psi": max(psis) if psis else None,
            "score_distribution": dg.MetadataValue.md(markdown_table([
                {"cutoff": cutoff, **{k: v for k, v in d.items() if k != "grades"}}
                for cutoff, d in by_cutoff.items()])),
            "grades": dg.MetadataValue.json({cutoff: d["grades"] for cutoff, d in by_cutoff.items()}),
        })

    @dg.asset_check(asset=PD_SCORES, name="scores_stable_against_training", blocking=False,
                    description=f"The PSI of each scored cutoff against the champion's training scores stays below "
                                f"{PSI_SHIFTED} (a larger shift means the book no longer looks like what the model "
                                "learnt from: retrain).")
    def scores_stable(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(PD_SCORES)
        psi = event.asset_materialization.metadata.get("max_psi") if event else None
        value = None if psi is None else psi.value
        return dg.AssetCheckResult(passed=value is None or value < PSI_SHIFTED, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"max_psi": value, "threshold": PSI_SHIFTED})

    scores_schema = pandera_asset_check(
        PD_SCORES, pd_scores_model(), lambda context: delta_source(context.resources.lake.table(PD_SCORES.path)),
        name="pandera_schema", required_resource_keys={"lake"})

    retrain = dg.define_asset_job(RETRAIN_JOB, selection=[PD_MODEL],
                                  description="Train, log and register the PD model; champion only if it wins.")
    monthly = dg.define_asset_job(
        MONTHLY_JOB, selection=dg.AssetSelection.assets(LOAN_FEATURES, LOAN_SNAPSHOTS, LOAN_OUTCOMES, PD_SCORES),
        partitions_def=cutoffs_def, description="A month's features and loan snapshots, the outcomes known so far, "
                                                "and the month's scores from the champion.")
    return dg.Definitions(
        assets=[pd_model_asset, pd_scores], asset_checks=[auc_near_the_oracle, scores_stable, scores_schema],
        jobs=[retrain, monthly],
        schedules=[
            build_monthly_schedule(monthly, cutoffs_def),
            dg.ScheduleDefinition(name="retrain_pd_model_weekly", job=retrain, cron_schedule="0 5 * * 1",
                                  default_status=dg.DefaultScheduleStatus.STOPPED,
                                  description="Weekly retraining; off by default (turn it on in the UI)."),
        ],
    )
