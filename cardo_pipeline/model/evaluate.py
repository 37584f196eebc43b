"""How well the PD recipe does on any labelled loan table: nested cross-validation with the same code the pipeline
trains with. Outer stratified folds hold rows out; inside each, `fit_candidates` searches, calibrates and
`choose_best` picks a family on the training part alone; the held-out part is only scored. The reported metrics are
computed once over all out-of-fold predictions.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from cardo_pipeline.model.metrics import score_metrics
from cardo_pipeline.model.recipe import choose_best, fit_candidates, infer_feature_spec, predict_pd

# Target labels read as "defaulted" (the positive class) or as "repaid", compared lowercased and stripped. Numbers
# only as the pair 0/1: in 1/2 (the original German credit coding) 2 is the bad one, so no number is a name.
DEFAULT_LABELS = frozenset({"bad", "default", "defaulted", "yes", "y", "true", "t", "charged off", "charged_off",
                            "chargeoff", "delinquent", "positive"})
REPAID_LABELS = frozenset({"good", "non-default", "nondefault", "no_default", "performing", "current", "paid",
                           "fully paid", "fully_paid", "no", "n", "false", "f", "negative"})
# Inner folds (hyperparameter search and calibration) inside each outer training part.
INNER_FOLDS = 5


class EvaluationInputError(ValueError):
    """The table cannot be evaluated as given (no such file or column, a target that is not two classes): the
    message says what was found and what to change."""


def target_as_binary(values: pd.Series, positive: str | None = None) -> tuple[np.ndarray, str]:
    """The target as 0/1 (1 = default) and the label taken as the default. Accepts 0/1 (as numbers or text),
    booleans, or two labels of which one reads as a default ("bad", "default", "yes", "true", ...) or the other as
    repaid ("good", "paid", "no", "false", ...); `positive` names the default label outright."""
    present = values.dropna()
    distinct = list(pd.unique(present))
    if len(distinct) != 2:
        raise EvaluationInputError(
            f"target {values.name!r} must hold exactly two classes, found {len(distinct)}: {_shown(distinct)}")
    as_text = {value: str(value).strip() for value in distinct}
    if positive is not None:
        matches = [value for value, text in as_text.items() if text == positive.strip()]
        if not matches:
            raise EvaluationInputError(
                f"--positive {positive!r} is not a value of target {values.name!r}; its values are {_shown(distinct)}")
        positive_value = matches[0]
    elif all(isinstance(value, bool | np.bool_) for value in distinct):
        positive_value = next(value for value in distinct if bool(value))
    elif _is_zero_one(distinct):
        positive_value = next(value for value in distinct if float(str(value)) == 1)
    else:
        lowered = {value: text.lower() for value, text in as_text.items()}
        defaults = [value for value in distinct if lowered[value] in DEFAULT_LABELS]
        repaid = [value for value in distinct if lowered[value] in REPAID_LABELS]
        if len(defaults) == 1:
            positive_value = defaults[0]
        elif len(repaid) == 1 and not defaults:
            positive_value = next(value for value in distinct if value != repaid[0])
        else:
            raise EvaluationInputError(
                f"cannot tell which value of target {values.name!r} means default: found {_shown(distinct)}; "
                f"name it with --positive LABEL (e.g. --positive {as_text[distinct[0]]})")
    labels = (values == positive_value).to_numpy(dtype=np.int8)
    return labels, as_text[positive_value]


def _is_zero_one(values) -> bool:
    try:
        return sorted(float(str(value)) for value in values) == [0.0, 1.0]
    except ValueError:
        return False


def _shown(values) -> str:
    return ", ".join(repr(value) for value in list(values)[:10]) + (", ..." if len(values) > 10 else "")


def evaluate_table(frame: pd.DataFrame, target: str, *, folds: int = 5, random_state: int = 0,
                   positive: str | None = None, drop=()) -> dict:
    """Out-of-fold AUC, Gini, KS, Brier score and log loss of the recipe on `frame`, with what it used: features
    (identifier-like and constant columns dropped, see `infer_feature_spec`), the family chosen in each outer fold
    and the seconds taken. Rows without a target are left out (counted in `unlabelled_rows`)."""
    started = time.perf_counter()
    if folds < 2:
        raise EvaluationInputError(f"--folds must be at least 2, not {folds}")
    if target not in frame.columns:
        raise EvaluationInputError(
            f"target column {target!r} is not in the table; available columns: {', '.join(map(str, frame.columns))}")
    labelled = frame[frame[target].notna()].reset_index(drop=True)
    labels, positive_label = target_as_binary(labelled[target], positive)
    spec = infer_feature_spec(labelled, target, drop=drop)
    if not spec.columns:
        raise EvaluationInputError(f"no feature columns left in the table: dropped {spec.dropped}")
    positives = int(labels.sum())
    if min(positives, len(labels) - positives) < folds:
        raise EvaluationInputError(
            f"{folds} folds need at least {folds} rows of each class; target {target!r} has {positives} defaults "
            f"and {len(labels) - positives} non-defaults")

    out_of_fold = np.full(len(labels), np.nan)
    per_fold = []
    outer = StratifiedKFold(folds, shuffle=True, random_state=random_state)
    for fold, (train, test) in enumerate(outer.split(np.zeros(len(labels)), labels)):
        models = fit_candidates(labelled.iloc[train], labels[train], spec, cv_splits=INNER_FOLDS,
                                random_state=random_state)
        best = choose_best(models)
        out_of_fold[test] = predict_pd(best, labelled.iloc[test])
        per_fold.append({
            "fold": fold,
            "family": best.family,
            "test_auc": score_metrics(labels[test], out_of_fold[test])["auc"],
            "inner_cv_auc": {model.family: model.cv_auc for model in models},
            "best_params": {key.removeprefix("classifier__"): value for key, value in best.best_params.items()},
        })

    metrics = score_metrics(labels, out_of_fold)
    return {
        **metrics,
        "folds": folds,
        "target": target,
        "positive_label": positive_label,
        "unlabelled_rows": len(frame) - len(labelled),
        "features": {"numeric": len(spec.numeric), "categorical": len(spec.categorical)},
        "feature_columns": {"numeric": spec.numeric, "categorical": spec.categorical},
        "dropped": {name: reason for name, reason in spec.dropped.items() if name != target},
        "chosen_family": [fold["family"] for fold in per_fold],
        "per_fold": per_fold,
        "seconds": round(time.perf_counter() - started, 2),
    }


def evaluate_csv(path, target: str, **options) -> dict:
    """`evaluate_table` on a CSV file; a missing file or target column is an EvaluationInputError naming it."""
    csv = Path(path)
    if not csv.is_file():
        raise EvaluationInputError(f"CSV file {csv} does not exist")
    try:
        frame = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise EvaluationInputError(f"cannot read {csv} as CSV: {exc}".replace("\n", " ")) from exc
    if target not in frame.columns:
        raise EvaluationInputError(
            f"target column {target!r} is not in {csv}; available columns: {', '.join(map(str, frame.columns))}")
    return evaluate_table(frame, target, **options)
