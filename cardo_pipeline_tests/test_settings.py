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


@pytest.mark.parametrize("variable", ["CARDO_PG_PORT", "CARDO_KAFKA_PORT", "CARDO_CONNECT_PORT"])
@pytest.mark.parametrize("value", ["abc", "0", "70000"])
def test_a_bad_port_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        CardoSettings.from_env({variable: value})
