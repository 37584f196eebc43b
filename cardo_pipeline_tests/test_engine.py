"""The engine setting: global and per asset, from the environment or the resource's config; bad values name the
setting they came from."""

from __future__ import annotations

import dagster as dg
import pytest

from cardo_pipeline.defs.resources import EngineResource
from cardo_pipeline.engine import engine_for, engines_from_env
from cardo_pipeline.settings import ConfigError
from cardo_pipeline.spark.session import SparkSettings

LOANS = dg.AssetKey(["curated", "loans"])
PAYMENTS = dg.AssetKey(["curated", "payments"])


def test_the_default_engine_is_local_and_overrides_go_per_asset() -> None:
    assert engines_from_env({}) == ("local", {})
    default, overrides = engines_from_env({"CARDO_ENGINE": "spark",
                                           "CARDO_ENGINE_ASSETS": '{"curated/loans": "local"}'})
    assert engine_for("curated/loans", default, overrides) == "local"
    assert engine_for("curated/payments", default, overrides) == "spark"


@pytest.mark.parametrize(("env", "named"), [
    ({"CARDO_ENGINE": "polars"}, "CARDO_ENGINE"),
    ({"CARDO_ENGINE_ASSETS": "curated/loans=spark"}, "CARDO_ENGINE_ASSETS"),
    ({"CARDO_ENGINE_ASSETS": '["spark"]'}, "CARDO_ENGINE_ASSETS"),
    ({"CARDO_ENGINE_ASSETS": '{"curated/loans": "flink"}'}, "CARDO_ENGINE_ASSETS['curated/loans']"),
])
def test_a_bad_engine_setting_names_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        engines_from_env(env)


def test_the_resource_config_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARDO_ENGINE", "spark")
    monkeypatch.delenv("CARDO_ENGINE_ASSETS", raising=False)
    assert EngineResource().for_asset(LOANS) == "spark"
    assert EngineResource(default="local").for_asset(LOANS) == "local"
    per_asset = EngineResource(default="local", assets={"curated/payments": "spark"})
    assert (per_asset.for_asset(LOANS), per_asset.for_asset(PAYMENTS)) == ("local", "spark")
    with pytest.raises(ConfigError, match="engine.default"):
        EngineResource(default="duckdb").for_asset(LOANS)


def test_spark_settings_come_from_the_environment_and_bad_ones_name_the_variable() -> None:
    settings = SparkSettings.from_env({"CARDO_SPARK_MASTER": "spark://127.0.0.1:7077",
                                       "CARDO_SPARK_CONF": '{"spark.executor.memory": "4g"}'})
    assert settings.master == "spark://127.0.0.1:7077" and settings.extra_conf == {"spark.executor.memory": "4g"}
    assert SparkSettings.from_env({}).master == "local[2]"
    with pytest.raises(ConfigError, match="CARDO_SPARK_CONF"):
        SparkSettings.from_env({"CARDO_SPARK_CONF": "spark.executor.memory=4g"})
    with pytest.raises(ConfigError, match="CARDO_SPARK_SHUFFLE_PARTITIONS"):
        SparkSettings.from_env({"CARDO_SPARK_SHUFFLE_PARTITIONS": "0"})
