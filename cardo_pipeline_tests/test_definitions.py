"""The code location loads, and its asset graph is the one the design promises (no services needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from cardo_pipeline.definitions import DEMO_JOB, defs
from cardo_pipeline.defs.groups import ALL_GROUPS, SOURCES
from cardo_pipeline.defs.raw.sensor import SENSOR_NAME
from cardo_pipeline.defs.resources import resources_for
from cardo_pipeline.tables import SOURCE_TABLES

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    return defs()


def test_every_source_table_has_an_observed_topic_asset(definitions: dg.Definitions) -> None:
    graph = definitions.resolve_asset_graph()
    topic_keys = {dg.AssetKey(["kafka", t.name]) for t in SOURCE_TABLES}
    assert topic_keys <= set(graph.get_all_asset_keys())
    for key in topic_keys:
        node = graph.get(key)
        assert node.is_observable and node.group_name == SOURCES


def test_asset_groups_are_those_of_the_design(definitions: dg.Definitions) -> None:
    graph = definitions.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups <= set(ALL_GROUPS), f"unexpected groups: {groups - set(ALL_GROUPS)}"


def test_demo_job_selects_every_executable_asset(definitions: dg.Definitions) -> None:
    job = definitions.resolve_job_def(DEMO_JOB)
    graph = definitions.resolve_asset_graph()
    executable = {k for k in graph.get_all_asset_keys() if graph.get(k).is_executable}
    assert set(job.asset_layer.selected_asset_keys) == executable


def test_curated_and_iceberg_follow_raw_through_a_sensor_that_starts_running(definitions: dg.Definitions) -> None:
    sensor = definitions.resolve_sensor_def("curated_follows_raw")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    targeted = sensor.asset_selection.resolve(definitions.resolve_asset_graph())
    expected = {k for k in definitions.resolve_asset_graph().get_all_asset_keys()
                if k.path[0] in ("curated", "iceberg") or (k.path[0] == "features" and k.path[-1].endswith("_geo"))}
    assert targeted == expected and len(expected) == 3 * len(SOURCE_TABLES) + 2
    for key in expected:
        assert definitions.resolve_assets_def(key).automation_conditions_by_key[key] is not None


def test_the_kafka_sensor_targets_raw_and_what_follows_it(definitions: dg.Definitions) -> None:
    job = definitions.resolve_sensor_def(SENSOR_NAME).job
    targeted = set(definitions.resolve_job_def(job.name).asset_layer.selected_asset_keys)
    assert {key.path[0] for key in targeted} == {"raw", "curated", "iceberg"}
    assert len(targeted) == 4 * len(SOURCE_TABLES)


def test_resources_are_chosen_per_environment_with_the_same_keys() -> None:
    assert resources_for("local").keys() == resources_for("k8s").keys()
    with pytest.raises(ValueError, match="CARDO_ENV"):
        resources_for("staging")


@pytest.mark.parametrize(
    "command",
    [
        ["dagster", "definitions", "validate", "-w", "workspace.yaml"],
        ["dg", "check", "defs"],
    ],
    ids=["dagster-definitions-validate", "dg-check-defs"],
)
def test_command_line_tools_accept_the_definitions(command: list[str], tmp_path: Path) -> None:
    binary = str(Path(sys.executable).parent / command[0])
    result = subprocess.run(
        [binary, *command[1:]],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
            "DAGSTER_HOME": str(tmp_path),
            "HOME": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_every_table_is_born_with_its_pandera_check(definitions: dg.Definitions) -> None:
    """Every table of the graph (all but the observed topics, the PD model, which is a model in MLflow, not a
    table, and the dbt models, whose checks are their dbt tests) has a Pandera check, blocking where its model is
    ERROR. Each dbt model has dbt tests declared beside it, a key test among them."""
    graph = definitions.resolve_asset_graph()
    dbt_models = {key for key in graph.get_all_asset_keys() if "dbt" in graph.get(key).kinds}
    assert {k.to_user_string() for k in dbt_models} >= {"marts/loan_tape", "marts/portfolio_kpis",
                                                        "marts/concentration_by_region", "marts/pd_by_region",
                                                        "marts/vintage_curves", "staging/stg_curated__loans"}
    for key in dbt_models:
        names = [k.name for k in graph.asset_check_keys if k.asset_key == key]
        assert any(n.startswith(("unique_", "unique_combination_")) for n in names), (key, names)
    tables = {key for key in graph.get_all_asset_keys() if key.path[0] != "kafka" and key not in dbt_models
              and not ("mlflow" in graph.get(key).kinds and "delta" not in graph.get(key).kinds)}
    checks = {key.asset_key: graph.get_check_spec(key) for key in graph.asset_check_keys
              if key.name == "pandera_schema"}
    assert tables and tables <= set(checks), sorted(k.to_user_string() for k in tables - set(checks))
    assert all(spec.blocking and spec.metadata["severity"] == "ERROR" for spec in checks.values())
    warn = [graph.get_check_spec(k) for k in graph.asset_check_keys if k.name == "pandera_source_rules"]
    assert len(warn) == 2 * len(SOURCE_TABLES) and not any(spec.blocking for spec in warn)
