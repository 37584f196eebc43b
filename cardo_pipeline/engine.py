"""Which engine computes an asset: `local` (delta-rs, polars, our own Delta commits) or `spark` (pyspark with the
Delta, Iceberg and Kafka jars). Both give the same tables (tested against each other and the oracle); Spark is
for books that outgrow one machine.

Chosen globally with `CARDO_ENGINE` (default `local`) and per asset with `CARDO_ENGINE_ASSETS`, a JSON object of
asset key paths to engines (`{"curated/loans": "spark"}`); the Dagster resource `engine` takes the same two
settings as config, so a run can switch in the launchpad.

Where the Spark engine runs is the launch (`CARDO_SPARK_LAUNCH`, resource field `engine.launch`): `session`, the
default, is a SparkSession in the Dagster step's own process (pyspark starts the driver's JVM there); `pipes` is a
`spark-submit` job under Dagster Pipes (`spark.pipes`): a subprocess on this machine, a pod on Kubernetes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from cardo_pipeline.settings import ConfigError, json_object_setting

Engine = Literal["local", "spark"]
ENGINES: tuple[Engine, ...] = ("local", "spark")


Launch = Literal["session", "pipes"]
LAUNCHES: tuple[Launch, ...] = ("session", "pipes")


def parse_launch(value: str, field: str) -> Launch:
    """`value` as a Spark launch; a bad one names `field` (the setting it came from)."""
    if value not in LAUNCHES:
        raise ConfigError(f"{field} must be one of {', '.join(LAUNCHES)}, got {value!r}")
    return value  # type: ignore[return-value]


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch:
    """How the Spark engine runs, from CARDO_SPARK_LAUNCH (default `session`)."""
    env = os.environ if env is None else env
    return parse_launch(env.get("CARDO_SPARK_LAUNCH") or "session", "CARDO_SPARK_LAUNCH")


def parse_engine(value: str, field: str) -> Engine:
    """`value` as an engine; a bad one names `field` (the setting it came from)."""
    if value not in ENGINES:
        raise ConfigError(f"{field} must be one of {', '.join(ENGINES)}, got {value!r}")
    return value  # type: ignore[return-value]


def engines_from_env(env: Mapping[str, str] | None = None) -> tuple[Engine, dict[str, Engine]]:
    """(the default engine, per-asset overrides) from CARDO_ENGINE and CARDO_ENGINE_ASSETS."""
    env = os.environ if env is None else env
    default = parse_engine(env.get("CARDO_ENGINE") or "local", "CARDO_ENGINE")
    overrides = json_object_setting(env, "CARDO_ENGINE_ASSETS", "asset key -> engine")
    return default, {str(k): parse_engine(str(v), f"CARDO_ENGINE_ASSETS[{k!r}]") for k, v in overrides.items()}


def engine_for(asset_path: str, default: Engine, overrides: Mapping[str, Engine]) -> Engine:
    """The engine of the asset at `asset_path` ("curated/loans"): its override, else the default."""
    return overrides.get(asset_path, default)
