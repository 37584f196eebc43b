"""How good a probability-of-default score is: discrimination (AUC, Gini, KS), calibration (Brier, log loss, a
table by score bin) and stability over time (PSI against a stored reference distribution).

Everything returns plain Python numbers, lists or a pandas frame so that results go straight into JSON, MLflow or
Dagster metadata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

# Probabilities are clipped this far from 0 and 1 before taking logs: one confident mistake must not make the
# log loss infinite.
LOG_LOSS_CLIP = 1e-15
# A score bin that is empty on one side of a PSI comparison counts as this share instead of 0 (log of 0 is -inf).
PSI_EPSILON = 1e-6


def _labels(y_true) -> np.ndarray:
    y = np.asarray(y_true).astype(float).ravel()
    if y.size and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 and 1 (1 = default)")
    return y.astype(np.int8)


def _scores(scores, name: str = "scores") -> np.ndarray:
    values = np.asarray(scores, dtype=float).ravel()
    if np.isnan(values).any():
        raise ValueError(f"{name} contain NaN")
    return values


def score_metrics(y_true, p) -> dict:
    """AUC, Gini (2*AUC-1), KS (max TPR-FPR), Brier score and log loss of default probabilities `p` against 0/1
    outcomes, with the row count, positives and default rate. AUC, Gini and KS are NaN when only one class is
    present (they compare defaults with non-defaults)."""
    y = _labels(y_true)
    probabilities = _scores(p, "probabilities")
    if len(y) != len(probabilities):
        raise ValueError(f"y_true has {len(y)} rows but p has {len(probabilities)}")
    if not len(y):
        raise ValueError("no rows to score")
    positives = int(y.sum())
    if 0 < positives < len(y):
        auc = float(roc_auc_score(y, probabilities))
        false_positive_rate, true_positive_rate, _ = roc_curve(y, probabilities)
        ks = float(np.max(true_positive_rate - false_positive_rate))
    else:
        auc = ks = math.nan
    clipped = np.clip(probabilities, LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP)
    log_loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log1p(-clipped)))
    return {
        "auc": auc,
        "gini": 2 * auc - 1,
        "ks": ks,
        "brier": float(np.mean((probabilities - y) ** 2)),
        "log_loss": log_loss,
        "rows": len(y),
        "positives": positives,
        "default_rate": positives / len(y),
    }


def calibration_table(y_true, p, bins: int = 10) -> pd.DataFrame:
    """Predicted against observed default rate per quantile bin of `p` (bin 0 = lowest scores), as cut by
    `score_bins`: equal scores always share a bin, so with many ties there are fewer than `bins` rows."""
    y = _labels(y_true)
    probabilities = _scores(p, "probabilities")
    if len(y) != len(probabilities):
        raise ValueError(f"y_true has {len(y)} rows but p has {len(probabilities)}")
    frame = pd.DataFrame({"p": probabilities, "y": y})
    frame["bin"] = _bin_index(probabilities, score_bins(probabilities, bins))
    table = (
        frame.groupby("bin", sort=True)
        .agg(rows=("y", "size"), mean_predicted=("p", "mean"), observed_rate=("y", "mean"), min_p=("p", "min"),
             max_p=("p", "max"))
        .reset_index()
    )
    table["bin"] = np.arange(len(table))
    return table


def score_bins(scores, bins: int = 10) -> list[float]:
    """Quantile bin edges of `scores`, ascending: the lowest score of each bin, then the highest score overall. A
    score s falls in bin j when edges[j] <= s < edges[j+1]; the first and last bins are open-ended, so later scores
    outside the range still count.

    Bins are cut by rank, never inside a run of equal scores: a score given to half the rows fills one bin, not
    all of them (plain quantile edges would merge both sides of it)."""
    values = np.sort(_scores(scores))
    if not len(values):
        raise ValueError("no scores to bin")
    if bins < 1:
        raise ValueError("bins must be at least 1")
    # Each value's bin by the rank of its first occurrence, so ties share one.
    first_rank = np.searchsorted(values, values, side="left")
    bin_of_rank = first_rank * bins // len(values)
    starts = np.flatnonzero(np.diff(bin_of_rank, prepend=-1))
    return [float(edge) for edge in [*values[starts], values[-1]]]


def _bin_index(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges[1:-1], dtype=float), values, side="right")


def _bin_shares(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Share of `values` in each bin of `edges`."""
    bin_count = max(len(edges) - 1, 1)
    return np.bincount(_bin_index(values, edges), minlength=bin_count) / max(len(values), 1)


def reference_distribution(scores, bins: int = 10) -> dict:
    """The reference a later PSI is computed against: quantile `edges` of `scores` and the share of scores in each
    bin (`proportions`, summing to 1). JSON-serialisable, to be stored beside the model."""
    edges = score_bins(scores, bins)
    return {"edges": edges, "proportions": [float(s) for s in _bin_shares(_scores(scores), edges)]}


def psi_against(reference: dict, actual_scores) -> float:
    """Population stability index of `actual_scores` against a stored `reference_distribution`:
    sum((actual - expected) * ln(actual / expected)) over the reference bins. Rules of thumb: < 0.1 stable,
    0.1-0.25 some shift, > 0.25 a population the model was not built on."""
    edges, expected = list(reference["edges"]), np.asarray(reference["proportions"], dtype=float)
    if len(expected) != max(len(edges) - 1, 1):
        raise ValueError(f"reference has {len(edges)} edges but {len(expected)} proportions")
    actual_values = _scores(actual_scores, "actual scores")
    if not len(actual_values):
        raise ValueError("no actual scores")
    actual = np.clip(_bin_shares(actual_values, edges), PSI_EPSILON, None)
    expected = np.clip(expected, PSI_EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def population_stability_index(expected_scores, actual_scores, bins: int = 10) -> float:
    """PSI of `actual_scores` against `expected_scores`, bins cut at the expected scores' quantiles."""
    return psi_against(reference_distribution(expected_scores, bins), actual_scores)
