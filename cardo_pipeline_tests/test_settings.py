"""Settings come from CARDO_* variables; a bad value names the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardo_pipeline.settings import CardoSettings, ConfigError


def test_defaults_live_under_cardo_home(tmp_path: Path) -> None:
    s = CardoSettings.from_env({"CARDO_HOME": str(tmp_path)})
    assert s.lake_dir == tmp_path / "lake"
    assert s.dagster_home == tmp_path / "dagster"
    assert s.iceberg_catalog_uri == f"sqlite:///{tmp_path}/iceberg/catalog.db"
    assert s.kafka_bootstrap == "127.0.0.1:29092"
    assert s.topic("loans") == "servicing.public.loans"
    assert s.mlflow_backend_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert s.mlflow_artifacts_dir == tmp_path / "mlflow-artifacts"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:25050"


@pytest.mark.parametrize(
    "variable", ["CARDO_PG_PORT", "CARDO_KAFKA_PORT", "CARDO_CONNECT_PORT", "CARDO_MLFLOW_PORT"]
)
@pytest.mark.parametrize("value", ["abc", "0", "70000"])
def test_a_bad_port_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        CardoSettings.from_env({variable: value})


def test_mlflow_port_sets_the_local_tracking_server(tmp_path: Path) -> None:
    s = CardoSettings.from_env({"CARDO_HOME": str(tmp_path), "CARDO_MLFLOW_PORT": "25999"})
    assert s.mlflow_port == 25999
    assert s.mlflow_tracking_uri == "http://127.0.0.1:25999"


def test_a_remote_tracking_server_overrides_the_local_one(tmp_path: Path) -> None:
    remote = "https://mlflow.risk.example.com"
    s = CardoSettings.from_env({"CARDO_HOME": str(tmp_path), "CARDO_MLFLOW_TRACKING_URI": remote})
    assert s.mlflow_tracking_override == remote
    assert s.mlflow_tracking_uri == remote
    # The local server's own locations are unchanged (the stack still runs one for local work).
    assert s.mlflow_backend_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert CardoSettings.from_env({"CARDO_MLFLOW_TRACKING_URI": ""}).mlflow_tracking_override is None
