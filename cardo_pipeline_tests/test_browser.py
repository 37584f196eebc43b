"""A person's view: `dagster dev` serves the asset graph, and headless Chromium shows the project's assets; the
stack's MLflow server shows the registered model with its `champion` alias."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cardo_pipeline.definitions import defs
from cardo_pipeline_tests.browser_helpers import dagster_dev as serve_dagster

pytestmark = pytest.mark.browser
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=2400,2400",  # the asset graph renders only the nodes in view: room for a whole group
    "--virtual-time-budget=20000",  # let the React app fetch the graph over GraphQL before we read the page
]


@pytest.fixture
def dagster_dev(tmp_path: Path, test_env: dict[str, str]):
    with serve_dagster(tmp_path / "dagster_home", test_env, tmp_path / "dagster-dev.log") as url:
        yield url


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is missing: `make deps` installs it"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_asset_graph_pages_list_the_projects_assets(dagster_dev: str, tmp_path: Path) -> None:
    graph = defs().resolve_asset_graph()
    groups: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, set()).add(key.path[-1])

    lineage = _chromium(tmp_path, "--dump-dom", f"{dagster_dev}/asset-groups").stdout
    assert "Global asset lineage" in lineage
    for group in groups:
        assert f">{group}<" in lineage, f"group {group} is not on the global lineage page"

    for group, names in sorted(groups.items()):
        page = f"{dagster_dev}/locations/cardo_pipeline/asset-groups/{group}"
        dom = _chromium(tmp_path, "--dump-dom", page).stdout
        missing = sorted(n for n in names if f">{n}<" not in dom)
        assert not missing, f"assets {missing} of group {group} are not on its asset graph page"

    screenshot = tmp_path / "raw-asset-graph.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", f"{dagster_dev}/locations/cardo_pipeline/asset-groups/raw")
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


def test_a_failing_pandera_check_shows_its_failures_in_the_ui(dagster_dev: str, tmp_path: Path) -> None:
    """A curated table with a bad row: its blocking Pandera check fails, and the check's page shows the model, the
    failure counts and the failing rows as a table."""
    from datetime import UTC, date, datetime
    from decimal import Decimal

    import dagster as dg
    import polars as pl

    from cardo_pipeline.curate.models import current_model
    from cardo_pipeline.curate.storage import current_schema
    from cardo_pipeline.defs.keys import curated_key
    from cardo_pipeline.quality.models import polars_dtypes
    from cardo_pipeline.tables import TABLES_BY_NAME
    from cardo_pipeline_tests.test_quality_checks import definitions

    loans = TABLES_BY_NAME["loans"]
    row = {"loan_id": 4242, "borrower_id": 1, "product": "mortgage", "currency": "EUR",
           "principal": Decimal("250000.00"), "interest_rate": Decimal("-0.02000"), "term_months": 300,
           "origination_date": date(2021, 3, 1), "maturity_date": date(2046, 3, 1),
           "outstanding_principal": Decimal("240000.00"), "status": "active", "days_past_due": 0,
           "servicer_notes": None, "updated_at": datetime(2026, 1, 5, tzinfo=UTC), "_cardo_lsn": 1,
           "_cardo_offset": 0, "_cardo_source_ts": datetime(2026, 1, 5, tzinfo=UTC)}
    good = [row | {"loan_id": i, "interest_rate": Decimal("0.03100")} for i in range(1, 6)]
    lake = tmp_path / "lake"
    pl.DataFrame([*good, row], schema=polars_dtypes(current_schema(loans)), orient="row").write_delta(
        str(lake / "curated" / "loans"))

    check = dg.AssetCheckKey(curated_key(loans), "pandera_schema")
    code_location = definitions(tmp_path, "127.0.0.1:9", "servicing", "host=127.0.0.1 port=9")
    job = dg.define_asset_job("check_curated_loans", selection=dg.AssetSelection.checks(check))
    with_job = dg.Definitions(assets=code_location.assets, asset_checks=code_location.asset_checks, jobs=[job],
                              resources=code_location.resources, executor=code_location.executor)
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        result = with_job.resolve_job_def("check_curated_loans").execute_in_process(instance=instance,
                                                                                   raise_on_error=False)
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["failure_count"].value == 1

    page = f"{dagster_dev}/assets/curated/loans?view=checks&checkDetail=pandera_schema"
    dom = _chromium(tmp_path, "--dump-dom", page).stdout
    screenshot = tmp_path / "failing-pandera-check.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", page)
    (tmp_path / "page.html").write_text(dom)
    for shown in ("pandera_schema", current_model(loans).name, "failing_rows_sample", "loan_id=4242",
                  "interest_rate fails in_range(0, 1): -0.02000"):
        assert shown in dom, f"{shown!r} is not on the check's page"
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


BROWSER_CHECK_MODEL = "cardo_pd_browser_check"  # not "cardo_pd": the model tests own that name


@pytest.fixture
def registered_champion_model(mlflow_tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The PD model as the pipeline trains and registers it (features of a small simulated book, both families,
    the registry's champion rule), on the test stack's MLflow server under a name of its own."""
    from datetime import date

    from cardo_pipeline.features.loan_features import KnownHistories, cutoffs_known, loan_features
    from cardo_pipeline.features.outcomes import default_outcomes
    from cardo_pipeline.geo.postcodes import postcode_nuts3
    from cardo_pipeline.model.registry import log_and_register
    from cardo_pipeline.model.training import labelled_features, train_pd_model
    from cardo_pipeline.simulator.history import simulated_histories

    book = simulated_histories(loans=800, months=20, seed=3)
    known = KnownHistories.from_histories(book.histories)
    cutoffs = cutoffs_known(known, date(2024, 1, 1))
    postcodes = postcode_nuts3().select("country_code", "postcode", "nuts3_code")
    labelled = labelled_features(loan_features(known, postcodes, cutoffs), default_outcomes(known, cutoffs))
    result = train_pd_model(labelled, truth=book.truth, plots_dir=tmp_path_factory.mktemp("plots"), test_cutoffs=2)
    registration = log_and_register(result, mlflow_tracking_uri, name=BROWSER_CHECK_MODEL,
                                    experiment=BROWSER_CHECK_MODEL)
    assert registration.alias == "champion", registration.decision
    return mlflow_tracking_uri, BROWSER_CHECK_MODEL


@pytest.mark.stack
def test_mlflow_shows_the_registered_models_champion_alias(
    registered_champion_model: tuple[str, str], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    tracking_uri, name = registered_champion_model
    version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, "champion").version
    page = f"{tracking_uri}/#/models/{name}"
    # MLflow's UI is a React app: the versions table, with each version's alias tags, is rendered after its API
    # calls; the virtual time budget normally covers them, and a slow first request gets another try.
    for _attempt in range(3):
        dom = _chromium(tmp_path, "--dump-dom", page).stdout
        if 'title="champion"' in dom:
            break
    (tmp_path / "model-page.html").write_text(dom)
    assert 'title="champion"' in dom, f"the champion alias is not on {page}; see {tmp_path / 'model-page.html'}"
    assert f'href="#/models/{name}/versions/{version}">Version {version}<' in dom, f"version {version} is not listed"

    screenshot = tmp_path / "mlflow-registered-model.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", page)
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
