"""The PD model in MLflow: a training run logged (params, metrics, plots, calibration, the model with its signature
and input example), registered as a new version, and judged against the current champion on the same out-of-time
test set. The new version takes the `champion` alias only if it beats the champion there; otherwise it is the
`challenger`. Scoring loads whatever `champion` points to.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cardo_pipeline.model.metrics import score_metrics
from cardo_pipeline.model.recipe import predict_pd
from cardo_pipeline.model.training import TARGET, TrainingResult, model_input

REGISTERED_MODEL = "cardo_pd"
EXPERIMENT = "cardo_pd"
CHAMPION, CHALLENGER = "champion", "challenger"
SCORE_REFERENCE = "score_reference.json"


class RegistryError(RuntimeError):
    """MLflow cannot be reached or holds no champion; the message says what to do."""


TRUSTED_MODULES = ("cardo_pipeline.", "sklearn.", "numpy.")
# Gradient boosting's fitted pipeline holds a partial of scikit-learn's check_array; skops lists the two apart.
TRUSTED_TYPES = ("functools.partial",)


def skops_trusted_types(estimator) -> list[str]:
    """The types skops (MLflow's safe sklearn format) must be told to trust to load this estimator: only ours,
    scikit-learn's and numpy's; anything else in a model is refused rather than trusted blindly."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(estimator))
    foreign = [t for t in untrusted if not t.startswith(TRUSTED_MODULES) and t not in TRUSTED_TYPES]
    if foreign:
        raise RegistryError(f"the model holds types from outside cardo_pipeline, scikit-learn and numpy: {foreign}")
    return sorted(untrusted)


def pip_requirements() -> list[str]:
    """What loading the model needs, stated: MLflow's inference imports the model in a subprocess (~10 s a run).
    The pipeline's own classes (`FrequentLevels`) come with the cardo_pipeline package, installed wherever it scores."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "skops", "numpy", "pandas", "cardo-pipeline")]


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@dataclass(frozen=True)
class Champion:
    model: object  # the fitted pipeline (predict_proba)
    version: int
    run_id: str


def load_champion(tracking_uri: str, name: str = REGISTERED_MODEL) -> Champion:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        raise RegistryError(f"MLflow at {tracking_uri} has no `{CHAMPION}` version of model {name!r}: materialize "
                            "models/pd_model first (job retrain_pd_model)") from exc
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.sklearn.load_model(f"models:/{name}@{CHAMPION}")
    return Champion(model, int(version.version), version.run_id)


def score_reference(tracking_uri: str, run_id: str) -> dict | None:
    """The training score distribution logged with a model's run (bin edges and proportions), for PSI."""
    import mlflow

    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SCORE_REFERENCE,
                                                   tracking_uri=tracking_uri)
    except Exception:  # noqa: BLE001 - a version logged without one: PSI is not available, nothing else breaks
        return None
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: int
    run_id: str
    experiment_id: str
    alias: str  # champion or challenger
    decision: str  # why, in words
    previous_champion: int | None
    previous_champion_auc: float | None  # on this run's test set
    run_url: str
    model_url: str

    def as_dict(self) -> dict:
        return asdict(self)


def _judge(result: TrainingResult, previous, tracking_uri: str, name: str) -> tuple[bool, float | None, str]:
    """Whether the new model takes `champion`, the champion's AUC on the new test set, and the decision in words."""
    new_auc = result.metrics["auc"]
    if previous is None:
        return True, None, f"no champion yet: version becomes {CHAMPION} (test AUC {new_auc:.4f})"
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        old = mlflow.sklearn.load_model(f"models:/{name}/{previous.version}")
        old_scores = predict_pd(old, model_input(result.split.test, result.spec))
    except Exception as exc:  # noqa: BLE001 - a champion that cannot score today's features has lost already
        return True, None, (f"champion v{previous.version} cannot score the current features ({exc.__class__.__name__}"
                            f": {str(exc)[:120]}): the new version becomes {CHAMPION}")
    old_auc = score_metrics(result.split.test[TARGET].to_numpy(), np.asarray(old_scores))["auc"]
    cutoffs = f"{result.split.test_cutoffs[0]}..{result.split.test_cutoffs[-1]}"
    if new_auc > old_auc:
        return True, old_auc, (f"test AUC {new_auc:.4f} beats champion v{previous.version}'s {old_auc:.4f} on the "
                               f"same out-of-time cutoffs ({cutoffs}): the new version becomes {CHAMPION}")
    return False, old_auc, (f"test AUC {new_auc:.4f} does not beat champion v{previous.version}'s {old_auc:.4f} on "
                            f"the same out-of-time cutoffs ({cutoffs}): the new version is the {CHALLENGER}")


def log_and_register(result: TrainingResult, tracking_uri: str, *, name: str = REGISTERED_MODEL,
                     experiment: str = EXPERIMENT, tags: dict[str, str] | None = None) -> Registration:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = _client(tracking_uri)
    try:
        experiment_id = mlflow.set_experiment(experiment).experiment_id
    except MlflowException as exc:
        raise RegistryError(f"MLflow at {tracking_uri} refused the experiment: {exc}") from exc
    try:
        previous = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        previous = None

    chosen, split = result.chosen, result.split
    example = model_input(split.test.head(5), result.spec)
    with mlflow.start_run(run_name=f"pd_model {chosen.family}", tags=tags or {}) as run:
        mlflow.log_params({
            "family": chosen.family, **{f"best.{k}": v for k, v in chosen.best_params.items()},
            "train_cutoffs": f"{split.train_cutoffs[0]}..{split.train_cutoffs[-1]} ({len(split.train_cutoffs)})",
            "test_cutoffs": f"{split.test_cutoffs[0]}..{split.test_cutoffs[-1]} ({len(split.test_cutoffs)})",
            "train_rows": split.train.height, "test_rows": split.test.height,
            "numeric_features": len(result.spec.numeric), "categorical_features": len(result.spec.categorical),
            "candidates": ",".join(m.family for m in result.candidates),
        })
        metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
        metrics["cv_auc"] = chosen.cv_auc
        metrics["fit_seconds"] = sum(m.fit_seconds for m in result.candidates)
        for family, values in result.test_metrics.items():
            metrics |= {f"{family}.{k}": float(v) for k, v in values.items() if isinstance(v, int | float)}
        if result.oracle:
            metrics |= {k: float(v) for k, v in result.oracle.items()}
        mlflow.log_metrics(metrics)
        for path in result.plots.values():
            mlflow.log_artifact(str(path), artifact_path="plots")
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "calibration.csv"
            result.calibration.to_csv(table, index=False)
            mlflow.log_artifact(str(table), artifact_path="evaluation")
        mlflow.log_dict(result.score_reference, SCORE_REFERENCE)
        mlflow.log_dict(result.spec.as_dict(), "feature_spec.json")
        signature = infer_signature(example, predict_pd(chosen, example))
        info = mlflow.sklearn.log_model(chosen.estimator, name="model", signature=signature, input_example=example,
                                        registered_model_name=name, pyfunc_predict_fn="predict_proba",
                                        skops_trusted_types=skops_trusted_types(chosen.estimator),
                                        pip_requirements=pip_requirements())
        version = int(info.registered_model_version)
        wins, previous_auc, decision = _judge(result, previous, tracking_uri, name)
        alias = CHAMPION if wins else CHALLENGER
        client.set_registered_model_alias(name, alias, str(version))
        if wins and previous is not None:
            with contextlib.suppress(MlflowException):  # the old champion's challenger is no rival of the new one
                client.delete_registered_model_alias(name, CHALLENGER)
        client.set_model_version_tag(name, str(version), "cardo.decision", decision)
        client.set_model_version_tag(name, str(version), "cardo.test_auc", f"{result.metrics['auc']:.5f}")
        mlflow.set_tag("cardo.decision", decision)
        mlflow.set_tag("cardo.alias", alias)
    base = tracking_uri.rstrip("/")
    return Registration(
        model_name=name, version=version, run_id=run.info.run_id, experiment_id=experiment_id, alias=alias,
        decision=decision, previous_champion=int(previous.version) if previous else None,
        previous_champion_auc=previous_auc, run_url=f"{base}/#/experiments/{experiment_id}/runs/{run.info.run_id}",
        model_url=f"{base}/#/models/{name}/versions/{version}")
