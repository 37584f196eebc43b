"""The probability-of-default recipe: which columns are features, the candidate model families, a cross-validated
hyperparameter search, probability calibration, and the choice between families.

Plain scikit-learn, no orchestration: the Dagster assets, the MLflow registry and `cardo model evaluate` all call
this module, so a model is trained the same way everywhere.

Speed matters: a full loan-month table (~700k rows x ~25 columns) must be fitted, both families with search and
calibration, in well under two and a half minutes on two cores. Hence the search runs on a stratified subsample
(`search_max_rows`), gradient boosting stops early, and the grids are small.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, KFold, RandomizedSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

LOGISTIC_REGRESSION = "logistic_regression"
HIST_GRADIENT_BOOSTING = "hist_gradient_boosting"
FAMILIES = (LOGISTIC_REGRESSION, HIST_GRADIENT_BOOSTING)

# Identifier-like column names. A strong name is an identifier whatever its values; a weak one ("loan_number",
# "contract_no") only when most of its values are distinct, because "installment_number" is a real feature.
# A bare "id" suffix is not enough ("paid", "valid", "covid"): it must be "_id", "id_", "Id" after a lowercase
# letter (camelCase "loanId") or the whole name.
_STRONG_ID_NAME = re.compile(r"(^id$|_id$|^id_|_key$|uuid$|guid$)", re.IGNORECASE)
_CAMEL_CASE_ID = re.compile(r"[a-z0-9](Id|ID)$")
_WEAK_ID_NAME = re.compile(r"(number$|_no$|_nr$|_ref$)", re.IGNORECASE)
WEAK_ID_MIN_DISTINCT_SHARE = 0.5
# Values: a string or integer column whose values are (nearly) all distinct is an identifier, not a feature. For
# integers the values must also be dense (a sequence: max - min < 2 x rows) since a near-unique amount in whole
# currency units is a feature. Small tables are exempt: 30 distinct incomes out of 30 rows prove nothing.
UNIQUE_SHARE_FOR_IDENTIFIER = 0.95
UNIQUE_RULE_MIN_ROWS = 50
# Gradient boosting takes at most 255 codes per categorical feature; levels past the 250 most frequent share one.
HGB_MAX_CATEGORIES = 250
# One-hot columns for levels seen in at least this share of rows; the rest share an "other" column.
ONE_HOT_MIN_FREQUENCY = 0.005
# "auto" calibration: isotonic regression needs many defaults to be smooth, else Platt's sigmoid.
ISOTONIC_MIN_POSITIVES = 1000
# From this many rows on, calibration holds out one fold (one refit of the pipeline on the other folds) instead of
# refitting once per fold: 20% of a large table calibrates as well as all of it, at a fifth of the cost.
SINGLE_CALIBRATION_FOLD_ROWS = 100_000
# Below this many rows, worker processes cost more to start and feed than the fits they share, and so do extra
# threads: on a small table gradient boosting's OpenMP threads mostly wait for each other at the end of each tiny
# parallel step, worse when another process holds a core (German credit's evaluation on a busy machine: 41 s with
# two threads, 22 s with one, once over ten minutes). Smaller fits run on one thread (a process-wide limit, lifted
# when the fit returns).
PARALLEL_SEARCH_ROWS = 20_000


@dataclass
class FeatureSpec:
    """The feature columns a model is fitted on. `dropped` says which other columns were left out and why."""

    numeric: list[str]
    categorical: list[str]
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def as_dict(self) -> dict:
        return {"numeric": list(self.numeric), "categorical": list(self.categorical), "dropped": dict(self.dropped)}


@dataclass
class Candidate:
    """A model family: its untrained pipeline (preprocessing + classifier) and the small grid searched over it."""

    family: str
    pipeline: Pipeline
    param_grid: dict[str, list]
    # None: every point of the grid; a number: that many points drawn from it (a randomized search).
    search_iterations: int | None = None
    # Search workers (processes) on tables of 20k rows or more. Two single-threaded fits side by side beat one
    # two-threaded gradient boosting fit, whose OpenMP threads wait on each other.
    search_jobs: int = 2


@dataclass
class FittedModel:
    """One family fitted by `fit_pd_model`: the calibrated estimator and how it was chosen and fitted."""

    family: str
    estimator: CalibratedClassifierCV  # predict_proba on a DataFrame holding the spec's columns
    best_params: dict
    # Mean AUC of the best parameters over the calibration folds: each fold's pipeline, fitted on all the other
    # rows, scored on the rows it did not see. Never a test set. Unlike the search's score (on a subsample of at
    # most search_max_rows rows) it is measured at the size the model is fitted at, where the families rank as
    # they will in use: gradient boosting gains more than the linear model from 700k rows.
    cv_auc: float
    fit_seconds: float
    rows: int
    spec: FeatureSpec
    search_auc: float = float("nan")  # the search's best mean AUC on its (sub)sample's folds
    search_rows: int = 0
    calibration: str = ""  # "isotonic" or "sigmoid"
    calibration_folds: int = 0


def _identifier_reason(name: str, column: pd.Series) -> str | None:
    if _STRONG_ID_NAME.search(name) or _CAMEL_CASE_ID.search(name):
        return "identifier-like name"
    rows = len(column)
    distinct = column.nunique(dropna=True)
    if _WEAK_ID_NAME.search(name) and rows and distinct / rows > WEAK_ID_MIN_DISTINCT_SHARE:
        return "identifier-like name with mostly distinct values"
    if rows <= UNIQUE_RULE_MIN_ROWS or distinct / rows < UNIQUE_SHARE_FOR_IDENTIFIER:
        return None
    if pd.api.types.is_integer_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        values = column.dropna()
        if int(values.max()) - int(values.min()) < 2 * rows:
            return f"distinct integer sequence ({distinct} values in {rows} rows)"
    elif _is_text(column):
        return f"distinct value per row ({distinct} values in {rows} rows)"
    return None


def _is_text(column: pd.Series) -> bool:
    return (pd.api.types.is_object_dtype(column.dtype) or pd.api.types.is_string_dtype(column.dtype)
            or isinstance(column.dtype, pd.CategoricalDtype))


def infer_feature_spec(frame: pd.DataFrame, target: str, drop: Sequence[str] = ()) -> FeatureSpec:
    """Numeric columns become numeric features; object, string, category and bool columns categorical ones.

    Left out (see `FeatureSpec.dropped`): the target and `drop`; identifiers, told by name (`id`, `*_id`, `id_*`,
    `*_key`, `*uuid`, camelCase `*Id`; `*number`, `*_no`, `*_ref` only when more than half the values are distinct)
    or by values (a text column with >= 95% distinct values, or an integer column with >= 95% distinct values
    forming a dense sequence, in a table of more than 50 rows); constant columns; other dtypes (dates, times)."""
    numeric: list[str] = []
    categorical: list[str] = []
    dropped: dict[str, str] = {}
    excluded = {target, *drop}
    for name in frame.columns:
        column = frame[name]
        if name in excluded:
            dropped[name] = "target" if name == target else "excluded by caller"
        elif column.nunique(dropna=False) <= 1:
            dropped[name] = "constant"
        elif (reason := _identifier_reason(str(name), column)) is not None:
            dropped[name] = reason
        elif pd.api.types.is_bool_dtype(column.dtype) or _is_text(column):
            categorical.append(name)
        elif pd.api.types.is_numeric_dtype(column.dtype):
            numeric.append(name)
        else:
            dropped[name] = f"unsupported dtype {column.dtype}"
    return FeatureSpec(numeric=numeric, categorical=categorical, dropped=dropped)


# Picklable (module-level) conversions: a fitted pipeline travels through MLflow and Dagster's IO managers.
def numeric_as_float(frame: pd.DataFrame) -> np.ndarray:
    """Numbers as float64, nullable pandas integers' <NA> as NaN."""
    return pd.DataFrame(frame).to_numpy(dtype="float64", na_value=np.nan)


class FrequentLevels(TransformerMixin, BaseEstimator):
    """Categorical columns as numeric level codes: 0..k-1 for the levels seen at fit in at least `min_frequency`
    of the rows (a share when below 1, else a count; the `max_levels` most frequent at most), k for every other
    level (rare at fit, or unseen), NaN where missing. Values are compared as text, so bools, numbers used as
    codes and mixed object columns all work.

    scikit-learn's encoders count levels with a Python call per value when asked for min_frequency or
    max_categories (about 12 s for 700k rows x 8 columns); pandas' hashing does it in a fraction of a second, and
    the encoders after this one then see small integer codes."""

    def __init__(self, min_frequency: float = 1, max_levels: int | None = None):
        self.min_frequency = min_frequency
        self.max_levels = max_levels

    def fit(self, X, y=None):
        frame = pd.DataFrame(X)
        threshold = self.min_frequency * len(frame) if self.min_frequency < 1 else self.min_frequency
        self.levels_ = []
        for name in frame.columns:
            counts = _as_text(frame[name]).value_counts(dropna=True)
            counts = counts[counts >= threshold]
            # Most frequent first; ties by name, so the codes do not depend on row order.
            ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: self.max_levels]
            self.levels_.append(sorted(level for level, _ in ordered))
        self.feature_names_in_ = np.asarray([str(name) for name in frame.columns], dtype=object)
        self.n_features_in_ = len(frame.columns)
        return self

    def transform(self, X) -> np.ndarray:
        frame = pd.DataFrame(X)
        codes = np.empty((len(frame), len(self.levels_)), dtype="float64")
        for position, (name, levels) in enumerate(zip(frame.columns, self.levels_, strict=True)):
            text = _as_text(frame[name])
            known = pd.Categorical(text, categories=levels).codes.astype("float64")
            known[known < 0] = len(levels)  # rare or unseen
            known[text.isna().to_numpy()] = np.nan
            codes[:, position] = known
        return codes

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return self.feature_names_in_ if input_features is None else np.asarray(input_features, dtype=object)


def _as_text(column: pd.Series) -> pd.Series:
    """A column's values as str, missing ones kept missing."""
    return column.astype(str).where(column.notna())


def _numeric_block(spec: FeatureSpec, *, scaled: bool) -> list[tuple]:
    if not spec.numeric:
        return []
    steps = [("as_float", FunctionTransformer(numeric_as_float, feature_names_out="one-to-one"))]
    if scaled:
        steps += [("impute", SimpleImputer(strategy="median", add_indicator=True)), ("scale", StandardScaler())]
    return [("numeric", Pipeline(steps), list(spec.numeric))]


def _logistic_regression(spec: FeatureSpec, random_state: int) -> Candidate:
    categorical = Pipeline([
        # Levels in fewer than 0.5% of rows share one "other" code; an unseen level at scoring time joins it.
        ("levels", FrequentLevels(min_frequency=ONE_HOT_MIN_FREQUENCY)),
        ("impute", SimpleImputer(strategy="constant", fill_value=-1)),  # missing is a level of its own
        ("one_hot", OneHotEncoder(handle_unknown="ignore")),
    ])
    blocks = _numeric_block(spec, scaled=True)
    if spec.categorical:
        blocks.append(("categorical", categorical, list(spec.categorical)))
    pipeline = Pipeline([
        # Sparse when the one-hot columns make the matrix mostly zeros (hundreds of levels on 700k rows would be a
        # dense gigabyte); lbfgs works on either.
        ("features", ColumnTransformer(blocks, remainder="drop", sparse_threshold=0.3)),
        # L2 penalty (the default); lbfgs on standardised features converges in a few dozen iterations.
        ("classifier", LogisticRegression(solver="lbfgs", max_iter=500, random_state=random_state)),
    ])
    return Candidate(LOGISTIC_REGRESSION, pipeline, {"classifier__C": [0.01, 0.1, 1.0]})


def _hist_gradient_boosting(spec: FeatureSpec, random_state: int) -> Candidate:
    # Categorical columns first, so that the classifier's native categorical features are the first columns.
    blocks = []
    if spec.categorical:
        # At most 250 codes (the classifier bins a category into at most 255); missing stays NaN, which the
        # classifier learns a direction for.
        blocks.append(("categorical", FrequentLevels(max_levels=HGB_MAX_CATEGORIES), list(spec.categorical)))
    blocks += _numeric_block(spec, scaled=False)  # trees need no scaling and handle NaN natively
    classifier = HistGradientBoostingClassifier(
        max_iter=300, early_stopping=True, validation_fraction=0.1, n_iter_no_change=10,
        categorical_features=list(range(len(spec.categorical))) or None, random_state=random_state)
    pipeline = Pipeline([("features", ColumnTransformer(blocks, remainder="drop", sparse_threshold=0)),
                         ("classifier", classifier)])
    # Four of the eight points: each fit of a 700k-row table's search costs seconds, and early stopping already
    # chooses the number of trees.
    grid = {"classifier__learning_rate": [0.05, 0.1], "classifier__max_leaf_nodes": [15, 31],
            "classifier__l2_regularization": [0.0, 1.0]}
    return Candidate(HIST_GRADIENT_BOOSTING, pipeline, grid, search_iterations=4)


def candidate_models(spec: FeatureSpec, random_state: int = 0) -> dict[str, Candidate]:
    """The model families, untrained: "logistic_regression" (one-hot + standardised, L2, C searched) and
    "hist_gradient_boosting" (native categoricals, early stopping; learning rate, leaves and L2 searched)."""
    if not spec.columns:
        raise ValueError("the feature spec has no columns")
    return {LOGISTIC_REGRESSION: _logistic_regression(spec, random_state),
            HIST_GRADIENT_BOOSTING: _hist_gradient_boosting(spec, random_state)}


def _binary_target(y) -> np.ndarray:
    as_float = np.asarray(y).astype(float).ravel()
    if not np.isin(as_float, (0.0, 1.0)).all():
        raise ValueError("y must hold only 0 and 1 (1 = default)")
    labels = as_float.astype(np.int8)
    if not len(labels) or labels.min() == labels.max():
        raise ValueError("y holds a single class: a PD model needs defaults and non-defaults")
    return labels


def _group_labels(y: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique groups, each row's group index, and whether each group has any default."""
    unique, row_group = np.unique(np.asarray(groups), return_inverse=True)
    group_defaulted = np.zeros(len(unique), dtype=np.int8)
    np.maximum.at(group_defaulted, row_group, y)
    return unique, row_group, group_defaulted


def stratified_splits(y, n_splits: int, *, groups=None, random_state: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled stratified k-fold (train, test) row positions. With `groups`, whole groups (say, all months of one
    loan) are assigned to folds, stratified by whether the group ever defaults, so no group sits in two folds.

    Equivalent in intent to StratifiedGroupKFold, whose per-group Python loop takes seconds per 10k loans."""
    labels = _binary_target(y)
    positions = np.arange(len(labels))
    if groups is None:
        folds = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
        return list(folds.split(positions, labels))
    _, row_group, group_defaulted = _group_labels(labels, groups)
    if len(group_defaulted) < n_splits:
        raise ValueError(f"{len(group_defaulted)} groups cannot fill {n_splits} folds")
    stratify = group_defaulted if np.bincount(group_defaulted, minlength=2).min() >= n_splits else None
    # Too few defaulting groups to stratify: plain shuffled folds of groups.
    folds = (StratifiedKFold if stratify is not None else KFold)(n_splits, shuffle=True, random_state=random_state)
    splits = []
    for _, test_groups in folds.split(np.arange(len(group_defaulted)), stratify):
        in_test = np.zeros(len(group_defaulted), dtype=bool)
        in_test[test_groups] = True
        test_rows = in_test[row_group]
        splits.append((positions[~test_rows], positions[test_rows]))
    return splits


def search_subsample(y, max_rows: int, *, groups=None, random_state: int = 0) -> np.ndarray:
    """Sorted row positions of a stratified subsample of about `max_rows` rows (all rows when there are fewer);
    with `groups`, whole groups are drawn."""
    labels = _binary_target(y)
    if len(labels) <= max_rows:
        return np.arange(len(labels))
    if groups is None:
        chosen, _ = train_test_split(np.arange(len(labels)), train_size=max_rows, stratify=labels,
                                     random_state=random_state)
        return np.sort(chosen)
    _, row_group, group_defaulted = _group_labels(labels, groups)
    share = max_rows / len(labels)
    stratify = group_defaulted if np.bincount(group_defaulted, minlength=2).min() >= 2 else None
    chosen_groups, _ = train_test_split(np.arange(len(group_defaulted)), train_size=share, stratify=stratify,
                                        random_state=random_state)
    keep = np.zeros(len(group_defaulted), dtype=bool)
    keep[chosen_groups] = True
    return np.flatnonzero(keep[row_group])


def _restrict_splits(splits, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Caller-given splits over all rows, re-expressed as positions within the subsample `rows`."""
    restricted = []
    for train, test in splits:
        train_in = np.flatnonzero(np.isin(rows, train))
        test_in = np.flatnonzero(np.isin(rows, test))
        if len(train_in) and len(test_in):
            restricted.append((train_in, test_in))
    return restricted


def _calibration_method(calibration: str, positives: int) -> str:
    if calibration == "auto":
        return "isotonic" if positives >= ISOTONIC_MIN_POSITIVES else "sigmoid"
    if calibration not in ("isotonic", "sigmoid"):
        raise ValueError(f"calibration must be 'isotonic', 'sigmoid' or 'auto', not {calibration!r}")
    return calibration


def fit_pd_model(X: pd.DataFrame, y, spec: FeatureSpec, *, family: str,
                 cv_splits: list[tuple[np.ndarray, np.ndarray]] | int = 5, groups=None, random_state: int = 0,
                 search_max_rows: int = 100_000, calibration: str = "auto",
                 calibration_folds: int | None = None) -> FittedModel:
    """Fit one model family: grid search scored by ROC AUC on at most `search_max_rows` rows (a stratified
    subsample, whole groups when `groups` is given), then the best pipeline calibrated on all rows with
    CalibratedClassifierCV over the same kind of folds.

    `cv_splits` is a fold count or explicit (train, test) row positions over all of X (then `groups` only shapes the
    subsample). `calibration="auto"` picks isotonic with >= 1000 defaults, else sigmoid. `calibration_folds` caps
    the folds calibrated on (each one refit of the pipeline): by default all of them below 100k rows, else the first
    (the estimator is then one pipeline fitted on the other folds and a calibrator on it). Gradient boosting's early
    stopping holds out a random 10% of its training rows, not whole groups: that only decides when to stop."""
    started = time.perf_counter()
    candidates = candidate_models(spec, random_state=random_state)
    if family not in candidates:
        raise ValueError(f"unknown model family {family!r}; choose from {sorted(candidates)}")
    candidate = candidates[family]
    labels = _binary_target(y)
    features = X.loc[:, spec.columns].reset_index(drop=True)
    if len(features) != len(labels):
        raise ValueError(f"X has {len(features)} rows but y has {len(labels)}")
    group_values = None if groups is None else np.asarray(groups)
    method = _calibration_method(calibration, int(labels.sum()))

    subsample = search_subsample(labels, search_max_rows, groups=group_values, random_state=random_state)
    search_groups = None if group_values is None else group_values[subsample]
    if isinstance(cv_splits, int):
        search_splits = stratified_splits(labels[subsample], cv_splits, groups=search_groups,
                                          random_state=random_state)
        calibration_splits = stratified_splits(labels, cv_splits, groups=group_values, random_state=random_state)
    else:
        calibration_splits = [(np.asarray(train), np.asarray(test)) for train, test in cv_splits]
        search_splits = (calibration_splits if len(subsample) == len(labels)
                         else _restrict_splits(calibration_splits, subsample))

    if calibration_folds is None:
        calibration_folds = 1 if len(labels) >= SINGLE_CALIBRATION_FOLD_ROWS else len(calibration_splits)
    calibration_splits = calibration_splits[: max(calibration_folds, 1)]

    threads = nullcontext() if len(labels) >= PARALLEL_SEARCH_ROWS else threadpool_limits(limits=1)
    with threads, warnings.catch_warnings():
        # A C at the edge of the grid may stop lbfgs a little short; the search still ranks it fairly.
        warnings.simplefilter("ignore", ConvergenceWarning)
        search_options = dict(scoring="roc_auc", cv=search_splits, refit=False, error_score="raise",
                              n_jobs=candidate.search_jobs if len(subsample) >= PARALLEL_SEARCH_ROWS else 1)
        if candidate.search_iterations is None:
            search = GridSearchCV(candidate.pipeline, candidate.param_grid, **search_options)
        else:
            search = RandomizedSearchCV(candidate.pipeline, candidate.param_grid, n_iter=candidate.search_iterations,
                                        random_state=random_state, **search_options)
        search.fit(features.iloc[subsample], labels[subsample])
        best = candidate.pipeline.set_params(**search.best_params_)
        calibrated = CalibratedClassifierCV(best, method=method, cv=calibration_splits, ensemble=True,
                                            n_jobs=candidate.search_jobs if len(labels) >= PARALLEL_SEARCH_ROWS else 1)
        calibrated.fit(features, labels)
        fold_aucs = [
            roc_auc_score(labels[test], fold.estimator.predict_proba(features.iloc[test])[:, 1])
            for fold, (_, test) in zip(calibrated.calibrated_classifiers_, calibration_splits, strict=True)
        ]
    return FittedModel(family=family, estimator=calibrated, best_params=dict(search.best_params_),
                       cv_auc=float(np.mean(fold_aucs)), fit_seconds=time.perf_counter() - started,
                       rows=len(labels), spec=spec, search_auc=float(search.best_score_),
                       search_rows=len(subsample), calibration=method, calibration_folds=len(calibration_splits))


def fit_candidates(X: pd.DataFrame, y, spec: FeatureSpec, *, families: Sequence[str] = FAMILIES,
                   **fit_options) -> list[FittedModel]:
    """Every family fitted with `fit_pd_model` (same folds, same options)."""
    return [fit_pd_model(X, y, spec, family=family, **fit_options) for family in families]


def choose_best(models: Sequence[FittedModel]) -> FittedModel:
    """The model with the highest cross-validated AUC (`cv_auc`); the first on ties. A test set must never decide
    this, or its AUC stops being an honest estimate."""
    if not models:
        raise ValueError("no models to choose from")
    return max(models, key=lambda model: model.cv_auc)


def predict_pd(model_or_estimator, X: pd.DataFrame) -> np.ndarray:
    """Probability of default (class 1) for each row of X: a FittedModel, or any fitted classifier (say, one loaded
    back from MLflow). Columns the model was not fitted on are ignored."""
    estimator = model_or_estimator
    if isinstance(model_or_estimator, FittedModel):
        estimator = model_or_estimator.estimator
    columns = getattr(estimator, "feature_names_in_", None)
    if isinstance(X, pd.DataFrame) and columns is not None:
        X = X.loc[:, list(columns)]
    probabilities = estimator.predict_proba(X)
    return probabilities[:, list(estimator.classes_).index(1)]
