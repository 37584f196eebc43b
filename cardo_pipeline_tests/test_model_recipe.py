"""The PD recipe as a library: metrics against scikit-learn and hand-computed cases, PSI properties, which columns
become features, folds that keep a loan's rows together, a fit that finds a known signal, and the charts."""

from __future__ import annotations

import json
import math
import pickle
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from cardo_pipeline.model import (
    FAMILIES,
    FeatureSpec,
    calibration_table,
    candidate_models,
    choose_best,
    fit_candidates,
    fit_pd_model,
    infer_feature_spec,
    population_stability_index,
    predict_pd,
    psi_against,
    reference_distribution,
    score_bins,
    score_metrics,
)
from cardo_pipeline.model.plots import calibration_png, roc_curve_png
from cardo_pipeline.model.recipe import FrequentLevels, search_subsample, stratified_splits

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_loans(rows: int, *, seed: int = 0, loans: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Loans whose default follows a known logistic model of two numeric and one categorical column, with missing
    values, an identifier and noise columns; `groups` are loan ids when rows are loan-months."""
    rng = np.random.default_rng(seed)
    income = rng.normal(size=rows)
    leverage = rng.normal(size=rows)
    region = rng.choice(np.array(["north", "south", "east", "west"], dtype=object), size=rows)
    region_effect = pd.Series(region).map({"north": -0.6, "south": 0.0, "east": 0.4, "west": 1.0}).to_numpy()
    logit = -2.0 - 1.3 * income + 1.1 * leverage + region_effect
    defaulted = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    income[rng.random(rows) < 0.05] = np.nan  # missing, imputed
    groups = rng.integers(0, loans, rows) if loans else np.arange(rows)
    frame = pd.DataFrame({
        "loan_id": groups,
        "income": income,
        "leverage": leverage,
        "region": region,
        "noise": rng.normal(size=rows),
        "product": rng.choice(np.array(["annuity", "bullet"], dtype=object), size=rows),
        "defaulted": defaulted,
    })
    return frame, groups


# --- metrics ---------------------------------------------------------------------------------------------------


def test_score_metrics_on_a_hand_computed_case():
    metrics = score_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    # Pairs (default, non-default) ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); wrong: (0.35 < 0.4).
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["gini"] == pytest.approx(0.5)
    assert metrics["ks"] == pytest.approx(0.5)  # at 0.8: TPR 0.5, FPR 0; at 0.35: TPR 1, FPR 0.5
    assert metrics["brier"] == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)
    assert metrics["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.6) + np.log(0.35) + np.log(0.8)) / 4)
    assert (metrics["rows"], metrics["positives"], metrics["default_rate"]) == (4, 2, 0.5)


def test_score_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.random(500) * 0.7, 0.001, 0.999)
    metrics = score_metrics(y, p)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p))
    assert metrics["brier"] == pytest.approx(brier_score_loss(y, p))
    assert metrics["log_loss"] == pytest.approx(log_loss(y, p))
    json.dumps(metrics)  # plain numbers, ready for MLflow and Dagster metadata


def test_log_loss_is_finite_for_confident_mistakes_and_auc_nan_for_one_class():
    assert math.isfinite(score_metrics([1, 0], [0.0, 1.0])["log_loss"])
    single_class = score_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(single_class["auc"]) and math.isnan(single_class["ks"])
    with pytest.raises(ValueError, match="only 0 and 1"):
        score_metrics([0, 2], [0.1, 0.2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=2, max_size=200))
def test_ks_in_unit_interval_and_gini_twice_auc_minus_one(pairs):
    y = [label for label, _ in pairs]
    p = [score for _, score in pairs]
    metrics = score_metrics(y, p)
    if 0 < sum(y) < len(y):
        assert 0 <= metrics["ks"] <= 1
        assert 0 <= metrics["auc"] <= 1
        assert metrics["gini"] == pytest.approx(2 * metrics["auc"] - 1)
    assert 0 <= metrics["brier"] <= 1


def test_calibration_table_covers_every_row_and_default():
    rng = np.random.default_rng(5)
    p = rng.beta(1, 8, 2000)
    y = (rng.random(2000) < p).astype(int)
    table = calibration_table(y, p, bins=10)
    assert list(table.columns) == ["bin", "rows", "mean_predicted", "observed_rate", "min_p", "max_p"]
    assert len(table) == 10 and table["rows"].sum() == 2000
    assert (table["rows"] * table["observed_rate"]).sum() == pytest.approx(y.sum())
    assert table["mean_predicted"].is_monotonic_increasing
    assert (table["max_p"].iloc[:-1].to_numpy() <= table["min_p"].iloc[1:].to_numpy()).all()
    # Many ties: bins merge rather than split equal scores.
    tied = calibration_table([0, 1] * 50, [0.1] * 60 + [0.9] * 40, bins=10)
    assert tied["rows"].tolist() == [60, 40]
    # A score held by more than half the rows still leaves the other one a bin of its own.
    two_scores = calibration_table([0] * 51 + [1] * 49, [0.1] * 51 + [0.9] * 49, bins=10)
    assert two_scores[["rows", "observed_rate"]].to_numpy().tolist() == [[51, 0.0], [49, 1.0]]


def test_psi_on_a_hand_computed_case_and_through_json():
    reference = reference_distribution(np.arange(100), bins=2)
    assert reference == {"edges": [0.0, 50.0, 99.0], "proportions": [0.5, 0.5]}
    reference = json.loads(json.dumps(reference))  # stored as an artifact, read back later
    # All new scores in the lower bin; the empty upper bin counts as 1e-6.
    expected = (1 - 0.5) * math.log(1 / 0.5) + (1e-6 - 0.5) * math.log(1e-6 / 0.5)
    assert psi_against(reference, np.arange(10)) == pytest.approx(expected)
    # Scores beyond the reference's range fall in the outer bins.
    assert psi_against(reference, [-5, 500]) == pytest.approx(0.0)


def test_psi_sees_a_shift_between_two_discrete_scores():
    development = [0.02] * 70 + [0.3] * 30
    assert psi_against(reference_distribution(development), [0.3] * 100) > 0.25
    assert psi_against(reference_distribution(development), [0.02] * 7 + [0.3] * 3) == pytest.approx(0.0)


def test_psi_tells_a_shifted_population_from_a_resample():
    rng = np.random.default_rng(11)
    development = rng.beta(2, 20, 20_000)
    assert population_stability_index(development, rng.beta(2, 20, 20_000)) < 0.01
    assert population_stability_index(development, rng.beta(4, 20, 20_000)) > 0.25


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=300), st.integers(1, 20))
def test_psi_of_a_distribution_against_itself_is_zero(scores, bins):
    assert population_stability_index(scores, scores, bins=bins) == pytest.approx(0.0, abs=1e-12)
    edges = score_bins(scores, bins)
    assert edges == sorted(edges) and len(edges) <= bins + 1
    assert sum(reference_distribution(scores, bins)["proportions"]) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=100), st.lists(st.floats(0, 1), min_size=1, max_size=100))
def test_psi_is_never_negative(expected, actual):
    assert population_stability_index(expected, actual) >= 0


# --- features --------------------------------------------------------------------------------------------------


def test_spec_inference_drops_identifiers_and_constants_and_keeps_categoricals():
    rows = 200
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "id": np.arange(rows),
        "loan_id": rng.permutation(rows) + 10_000,
        "customerId": rng.integers(0, 50, rows),
        "account_number": [f"AC{i:06d}" for i in range(rows)],  # weak name, distinct values
        "installment_number": np.arange(rows) % 24,  # weak name, repeating values: a feature
        "token": [f"t{i:x}{i * 7919 % 1000}" for i in range(rows)],  # distinct text: an identifier
        "row_counter": np.arange(rows) * 2,  # distinct, dense integers: a sequence
        "amount_cents": rng.permutation(rows) * 1_000 + 7,  # distinct but sparse integers: a feature
        "balance": rng.normal(size=rows),  # distinct floats: a feature
        "paid": rng.random(rows) < 0.5,  # ends in "id", a bool: categorical
        "valid": rng.choice(["y", "n"], rows),
        "segment": pd.Categorical(rng.choice(["retail", "sme"], rows)),
        "channel": pd.array(rng.choice(["web", "branch"], rows), dtype="string"),
        "country": "ES",
        "all_missing": np.nan,
        "opened_at": pd.date_range("2024-01-01", periods=rows, freq="D"),
        "leak": rng.normal(size=rows),
        "defaulted": rng.integers(0, 2, rows),
    })
    spec = infer_feature_spec(frame, "defaulted", drop=["leak"])
    assert spec.numeric == ["installment_number", "amount_cents", "balance"]
    assert spec.categorical == ["paid", "valid", "segment", "channel"]
    assert set(spec.dropped) == {"id", "loan_id", "customerId", "account_number", "token", "row_counter", "country",
                                 "all_missing", "opened_at", "leak", "defaulted"}
    assert spec.dropped["defaulted"] == "target" and spec.dropped["country"] == "constant"
    assert spec.dropped["leak"] == "excluded by caller"
    assert "unsupported dtype" in spec.dropped["opened_at"]
    assert "sequence" in spec.dropped["row_counter"] and "distinct value" in spec.dropped["token"]
    # Small tables prove nothing by distinct values: 30 distinct amounts in 30 rows stay features.
    small = frame.head(30)
    assert "token" in infer_feature_spec(small, "defaulted").categorical


def test_frequent_levels_codes_rare_unseen_and_missing():
    train = pd.DataFrame({"region": ["a"] * 50 + ["b"] * 45 + ["c"] * 3 + [None] * 2, "flag": [True, False] * 50})
    encoder = FrequentLevels(min_frequency=0.05).fit(train)
    assert encoder.levels_ == [["a", "b"], ["False", "True"]]
    codes = encoder.transform(pd.DataFrame({"region": ["a", "b", "c", "zz", None], "flag": [True] * 5}))
    assert codes[:4, 0].tolist() == [0, 1, 2, 2]  # rare "c" and unseen "zz" share the "other" code
    assert np.isnan(codes[4, 0]) and (codes[:, 1] == 1).all()
    assert FrequentLevels(max_levels=1).fit(train).levels_[0] == ["a"]


# --- folds -----------------------------------------------------------------------------------------------------


def test_group_folds_never_split_a_loan_and_stay_stratified():
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 400, 5000)
    defaulting_loans = rng.random(400) < 0.1
    y = (defaulting_loans[groups] & (rng.random(5000) < 0.3)).astype(int)
    splits = stratified_splits(y, 5, groups=groups, random_state=0)
    assert len(splits) == 5
    seen_in_test = np.zeros(5000, dtype=int)
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 5000
        seen_in_test[test] += 1
        test_loans_defaulting = pd.Series(y[test]).groupby(groups[test]).max()
        assert 0.04 < test_loans_defaulting.mean() < 0.2
    assert (seen_in_test == 1).all()


def test_search_subsample_draws_whole_loans_stratified():
    rng = np.random.default_rng(4)
    groups = rng.integers(0, 2000, 20_000)
    y = (rng.random(20_000) < 0.05).astype(int)
    rows = search_subsample(y, 5000, groups=groups, random_state=0)
    assert 4000 < len(rows) < 6000
    chosen = set(groups[rows])
    assert (np.isin(groups, list(chosen)) == np.isin(np.arange(20_000), rows)).all()
    plain = search_subsample(y, 5000, random_state=0)
    assert len(plain) == 5000 and y[plain].sum() == pytest.approx(y.mean() * 5000, abs=1)
    assert len(search_subsample(y, 50_000)) == 20_000


# --- fitting ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_on_loan_months():
    frame, groups = synthetic_loans(3000, seed=0, loans=600)
    spec = infer_feature_spec(frame, "defaulted")
    started = time.perf_counter()
    models = fit_candidates(frame, frame["defaulted"], spec, cv_splits=4, groups=groups, random_state=0)
    return frame, spec, models, time.perf_counter() - started


def test_candidates_cover_both_families_with_small_grids():
    spec = FeatureSpec(numeric=["income"], categorical=["region"])
    candidates = candidate_models(spec)
    assert set(candidates) == set(FAMILIES) == {"logistic_regression", "hist_gradient_boosting"}
    assert "classifier__C" in candidates["logistic_regression"].param_grid
    assert set(candidates["hist_gradient_boosting"].param_grid) == {
        "classifier__learning_rate", "classifier__max_leaf_nodes", "classifier__l2_regularization"}


def test_fit_finds_a_known_logistic_signal(fitted_on_loan_months):
    frame, spec, models, seconds = fitted_on_loan_months
    assert spec.dropped["loan_id"] == "identifier-like name"
    assert [model.family for model in models] == list(FAMILIES)
    holdout, _ = synthetic_loans(4000, seed=1)
    holdout.loc[:5, "region"] = "unseen region"  # a level never seen in training must still score
    for model in models:
        assert model.rows == 3000 and model.calibration == "sigmoid"  # < 1000 defaults
        assert model.cv_auc > 0.75 and model.search_auc > 0.75
        probabilities = predict_pd(model, holdout)
        assert ((probabilities > 0) & (probabilities < 1)).all()
        assert roc_auc_score(holdout["defaulted"], probabilities) > 0.75
        # The calibrated estimator alone takes the frame, extra columns and all.
        assert np.allclose(predict_pd(model.estimator, holdout), probabilities)
    best = choose_best(models)
    assert best.cv_auc == max(model.cv_auc for model in models)
    assert seconds < 60


def test_fitted_model_survives_pickling(fitted_on_loan_months):
    frame, _, models, _ = fitted_on_loan_months
    restored = pickle.loads(pickle.dumps(models[0].estimator))
    assert np.allclose(predict_pd(restored, frame), predict_pd(models[0], frame))


def test_fit_takes_explicit_group_splits_and_a_search_subsample():
    frame, groups = synthetic_loans(1500, seed=2, loans=300)
    spec = infer_feature_spec(frame, "defaulted")
    splits = stratified_splits(frame["defaulted"], 3, groups=groups, random_state=1)
    model = fit_pd_model(frame, frame["defaulted"], spec, family="logistic_regression", cv_splits=splits,
                         groups=groups, search_max_rows=800, calibration="isotonic")
    assert 500 < model.search_rows < 1100 and model.calibration == "isotonic" and model.calibration_folds == 3
    assert model.cv_auc > 0.75


def test_fit_rejects_what_it_cannot_fit():
    frame, _ = synthetic_loans(200)
    spec = infer_feature_spec(frame, "defaulted")
    with pytest.raises(ValueError, match="unknown model family"):
        fit_pd_model(frame, frame["defaulted"], spec, family="random_forest")
    with pytest.raises(ValueError, match="single class"):
        fit_pd_model(frame, np.zeros(200), spec, family="logistic_regression")
    with pytest.raises(ValueError, match="calibration"):
        fit_pd_model(frame, frame["defaulted"], spec, family="logistic_regression", calibration="beta")


# --- charts ----------------------------------------------------------------------------------------------------


def test_charts_are_written_as_png(tmp_path):
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 1000)
    scores = {"logistic_regression": np.clip(0.3 * y + 0.7 * rng.random(1000), 0, 1),
              "hist_gradient_boosting": np.clip(0.2 * y + 0.8 * rng.random(1000), 0, 1),
              "oracle": y * 0.8 + 0.1}
    for draw, name in ((roc_curve_png, "roc.png"), (calibration_png, "calibration.png")):
        path = draw(y, scores, tmp_path / "charts" / name)
        content = path.read_bytes()
        assert path == tmp_path / "charts" / name
        assert content.startswith(PNG_SIGNATURE) and len(content) > 10_000


# --- speed -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_both_families_fit_a_full_loan_month_table_in_time():
    """The Dagster asset's shape: 700k rows, 17 numeric and 8 categorical columns (3 to 100 levels), ~9% defaults.
    Both families, search and calibration included, must fit well within 150 s on two cores."""
    rows = 700_000
    rng = np.random.default_rng(0)
    logit = np.full(rows, -3.2)
    columns = {}
    for i in range(17):
        values = rng.normal(size=rows)
        if i < 8:
            logit += (0.35 if i % 2 else -0.25) * values
        if i % 5 == 0:
            values[rng.random(rows) < 0.05] = np.nan
        columns[f"numeric_{i}"] = values
    for j, levels in enumerate([3, 5, 8, 12, 20, 30, 50, 100]):
        codes = rng.integers(0, levels, rows)
        logit += rng.normal(scale=0.4, size=levels)[codes] if j < 5 else 0
        columns[f"categorical_{j}"] = np.array([f"level_{k}" for k in range(levels)], dtype=object)[codes]
    columns["defaulted"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(columns)
    spec = infer_feature_spec(frame, "defaulted")
    assert (len(spec.numeric), len(spec.categorical)) == (17, 8)
    started = time.perf_counter()
    models = fit_candidates(frame, frame["defaulted"], spec)
    seconds = time.perf_counter() - started
    assert min(model.cv_auc for model in models) > 0.75
    assert seconds < 150, [(model.family, round(model.fit_seconds, 1)) for model in models]
