"""The probability-of-default model as a plain library (no Dagster): feature inference, the candidate families,
search and calibration (`recipe`), score metrics and PSI (`metrics`), charts (`plots`) and nested cross-validation
of any labelled table (`evaluate`). The Dagster assets and `cardo model evaluate` both build on it."""

import os

# scikit-learn's OpenMP threads (gradient boosting) spin while they wait for work; on two cores shared with other
# processes (the stack, a second run) that turned a 14 s training into more than 10 minutes. Passive threads
# sleep instead. Read once, when libgomp loads: before scikit-learn is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# MLflow draws a progress bar per artifact download into the run's log; the logs want lines, not bars.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from cardo_pipeline.model.metrics import (
    calibration_table,
    population_stability_index,
    psi_against,
    reference_distribution,
    score_bins,
    score_metrics,
)
from cardo_pipeline.model.recipe import (
    FAMILIES,
    Candidate,
    FeatureSpec,
    FittedModel,
    candidate_models,
    choose_best,
    fit_candidates,
    fit_pd_model,
    infer_feature_spec,
    predict_pd,
)

__all__ = [
    "FAMILIES",
    "Candidate",
    "FeatureSpec",
    "FittedModel",
    "calibration_table",
    "candidate_models",
    "choose_best",
    "fit_candidates",
    "fit_pd_model",
    "infer_feature_spec",
    "population_stability_index",
    "predict_pd",
    "psi_against",
    "reference_distribution",
    "score_bins",
    "score_metrics",
]
