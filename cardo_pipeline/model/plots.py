"""Charts of a PD model's scores, written as PNG files (MLflow artifacts, Dagster metadata, reports).

Drawn on matplotlib's Agg canvas directly, never through pyplot: no display is needed, no global figure state is
kept, and concurrent runs in one process (Dagster's in-process executor) do not share figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from cardo_pipeline.model.metrics import calibration_table

_SIZE_INCHES = (6.0, 5.0)
_DPI = 110


def _new_axes(title: str, xlabel: str, ylabel: str):
    figure = Figure(figsize=_SIZE_INCHES, dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    _limits(axes, 1.0)
    axes.grid(alpha=0.3)
    return figure, axes


def _limits(axes, upper: float) -> None:
    # A little room past the ends, so that a curve running along an edge (a perfect score's) stays visible.
    margin = upper * 0.015
    axes.set_xlim(-margin, upper + margin)
    axes.set_ylim(-margin, upper + margin)


def _save(figure: Figure, path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(target, format="png")
    return target


def roc_curve_png(y_true, scores_by_name: dict[str, np.ndarray], path) -> Path:
    """ROC curve of each named score against the same outcomes, AUC in the legend, chance as the diagonal."""
    y = np.asarray(y_true)
    figure, axes = _new_axes("ROC curve", "False positive rate", "True positive rate")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUC 0.500)")
    for name, scores in scores_by_name.items():
        false_positive_rate, true_positive_rate, _ = roc_curve(y, np.asarray(scores))
        auc = roc_auc_score(y, np.asarray(scores))
        axes.plot(false_positive_rate, true_positive_rate, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
    axes.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def calibration_png(y_true, scores_by_name: dict[str, np.ndarray], path, bins: int = 10) -> Path:
    """Observed default rate against mean predicted PD per quantile bin of each named score; a calibrated score
    lies on the diagonal. Axes stop just past the largest value, since default rates are mostly small."""
    y = np.asarray(y_true)
    figure, axes = _new_axes("Calibration", "Mean predicted PD", "Observed default rate")
    largest = 0.0
    for name, scores in scores_by_name.items():
        table = calibration_table(y, scores, bins=bins)
        axes.plot(table["mean_predicted"], table["observed_rate"], marker="o", markersize=4, linewidth=1.5,
                  label=name)
        largest = max(largest, float(table["mean_predicted"].max()), float(table["observed_rate"].max()))
    limit = min(1.0, max(largest * 1.05, 0.01))
    axes.plot([0, limit], [0, limit], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    _limits(axes, limit)
    axes.legend(loc="upper left", fontsize="small")
    return _save(figure, path)
