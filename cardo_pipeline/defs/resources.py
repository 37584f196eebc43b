"""Resources, chosen per environment in this one place. Asset keys never change with the environment.

Local (the default): every resource falls back to the local stack's CardoSettings, resolved when a run uses it,
never at import. Kubernetes (`CARDO_ENV=k8s`, set in deploy/helm/values.yaml): endpoints and storage come from
environment variables of the user-code pods via EnvVar; the Spark engine's launch `pipes` submits its jobs as pods
(`K8sSparkLauncher`) instead of local `spark-submit` subprocesses (`SparkSubmitLauncher`).
"""

import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from cardo_pipeline.engine import (
    Engine,
    Launch,
    engine_for,
    engines_from_env,
    launch_from_env,
    parse_engine,
    parse_launch,
)
from cardo_pipeline.settings import CardoSettings, ConfigError
from cardo_pipeline.spark.pipes import SparkLauncher, spark_launcher
from cardo_pipeline.tables import DEFAULT_TOPIC_PREFIX, lake_uri, topic_name


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster holding the Debezium topics."""

    bootstrap_servers: str | None = None  # None: the local stack
    topic_prefix: str = DEFAULT_TOPIC_PREFIX

    def bootstrap(self) -> str:
        return self.bootstrap_servers or CardoSettings.from_env().kafka_bootstrap

    def topic(self, table: str) -> str:
        return topic_name(self.topic_prefix, table)


class ServicingDatabase(dg.ConfigurableResource):
    """The servicing Postgres, read only for reconciliation."""

    dsn: str | None = None  # None: the local stack

    def conninfo(self) -> str:
        return self.dsn or CardoSettings.from_env().pg_dsn


class LakeResource(dg.ConfigurableResource):
    """Where Delta tables live: `<root>/<asset key path>`, a folder locally, an object store URI in production."""

    root: str | None = None  # None: $CARDO_HOME/lake

    def root_uri(self) -> str:
        return self.root or str(CardoSettings.from_env().lake_dir)

    def table(self, path: Sequence[str]) -> str:
        """The location of the table at `path` (a `SourceTable.layout` path or `DEAD_LETTER_PATH`)."""
        return lake_uri(self.root_uri(), path)


class IcebergResource(dg.ConfigurableResource):
    """The Iceberg catalog the curated tables are mirrored into: pyiceberg's SQL catalog on SQLite locally; any
    pyiceberg catalog type (rest, glue, hive, sql on Postgres...) by configuration."""

    namespace: str = "curated"
    catalog_type: str = "sql"
    catalog_uri: str | None = None  # None: the local SQLite catalog, $CARDO_HOME/iceberg/catalog.db
    warehouse: str | None = None  # None: $CARDO_HOME/iceberg/warehouse
    extra_properties: dict[str, str] | None = None  # anything else the catalog type needs (credentials, ...)

    def catalog(self):
        from cardo_pipeline.mirror.iceberg import open_catalog, sql_catalog

        settings = CardoSettings.from_env()
        if self.catalog_type == "sql" and not self.extra_properties:
            return sql_catalog(self.catalog_uri or settings.iceberg_catalog_uri,
                               self.warehouse or settings.home / "iceberg" / "warehouse")
        properties = {"type": self.catalog_type, **(self.extra_properties or {})}
        properties |= {k: v for k, v in (("uri", self.catalog_uri), ("warehouse", self.warehouse)) if v}
        return open_catalog(properties)

    def identifier(self, table: str) -> str:
        return f"{self.namespace}.{table}"


class QualityResource(dg.ConfigurableResource):
    """Thresholds of the quality checks that are a matter of taste, not of contract."""

    kafka_lag_warn_messages: int = 10_000  # the lag check warns above this many messages waiting in Kafka
    reconcile_wait_seconds: float = 15.0  # how long reconciliation waits for Debezium's slot (1-4 s measured)
    geo_match_rate_min: float = 0.99  # the share of postcodes that must find their NUTS3 region
    # Skip reconciliation with the source (a replayed lake, an environment where the source is out of reach).
    reconcile_with_source: bool = True


class PdModelResource(dg.ConfigurableResource):
    """Where the PD model is tracked and registered, and how it is trained and judged."""

    tracking_uri: str | None = None  # None: the local stack's MLflow server (CARDO_MLFLOW_TRACKING_URI overrides)
    registered_model: str = "cardo_pd"
    experiment: str = "cardo_pd"
    test_cutoffs: int = 3  # the newest labelled cutoffs, held out: the out-of-time test set
    search_max_rows: int = 100_000  # rows the hyperparameter search sees (all rows are used to fit)
    # The simulator's true PDs (simulator.loan_truth in the servicing database) as the oracle to compare with;
    # production has no such table.
    oracle_from_simulator: bool = True
    oracle_min_ratio: float = 0.95  # the model's AUC over the oracle's, on the same test loans

    def tracking(self) -> str:
        return self.tracking_uri or CardoSettings.from_env().mlflow_tracking_uri


class EngineResource(dg.ConfigurableResource):
    """Which engine computes the raw, curated and feature assets (`cardo_pipeline.engine`): `local` or `spark`,
    for all of them (`default`) or per asset (`assets`, asset key path -> engine: {"curated/loans": "spark"}).
    Unset fields fall back to CARDO_ENGINE and CARDO_ENGINE_ASSETS, so a deployment switches with an environment
    variable and a single run switches in the launchpad.

    Where the raw and curated assets' Spark runs (`launch`, else CARDO_SPARK_LAUNCH): `session`, a SparkSession in
    the step's process, or `pipes`, a spark-submit job under Dagster Pipes through the Pipes client `launcher`
    names, which `resources_for` sets per environment: `spark-submit` on this machine (PipesSubprocessClient;
    `pipes_master`, else CARDO_SPARK_MASTER, is its --master) or `k8s`, a driver pod (PipesK8sClient). The feature
    assets always use a session."""

    default: str | None = None
    assets: dict[str, str] | None = None
    launch: str | None = None
    launcher: str = "spark-submit"
    pipes_master: str | None = None

    def for_asset(self, key: dg.AssetKey) -> Engine:
        env_default, env_assets = engines_from_env()
        default = parse_engine(self.default, "engine.default") if self.default else env_default
        overrides = env_assets if self.assets is None else {
            name: parse_engine(value, f"engine.assets[{name!r}]") for name, value in self.assets.items()}
        return engine_for(key.to_user_string(), default, overrides)

    def spark_launch(self) -> Launch:
        return parse_launch(self.launch, "engine.launch") if self.launch else launch_from_env()

    def spark_launcher(self) -> SparkLauncher:
        return spark_launcher(self.launcher, "engine.launcher", master=self.pipes_master)

    def spark(self):
        """The process's Spark session (started on first use)."""
        from cardo_pipeline.spark.session import spark_session

        return spark_session()


class MartsResource(dg.ConfigurableResource):
    """Where the dbt marts are built (one DuckDB file) and their settings, passed to dbt as vars."""

    database: str | None = None  # None: $CARDO_HOME/marts.duckdb
    lgd: float = 0.45  # loss given default in expected loss (PD x exposure x LGD): Basel F-IRB senior unsecured

    def database_path(self) -> Path:
        return Path(self.database) if self.database else CardoSettings.from_env().home / "marts.duckdb"

    def dbt_vars(self, lake_root: str) -> dict[str, object]:
        if not 0 <= self.lgd <= 1:
            raise ConfigError(f"marts.lgd must be a share between 0 and 1, got {self.lgd!r}")
        return {"lake_root": lake_root, "marts_database": str(self.database_path()), "lgd": self.lgd}


def dbt_cli() -> dg.ConfigurableResource:
    """dbt-core of this Python environment (its `dbt` sits beside the interpreter; PATH may not have it)."""
    import sys

    from dagster_dbt import DbtCliResource

    from cardo_pipeline.marts import dbt_project_dir

    project_dir = str(dbt_project_dir())
    return DbtCliResource(project_dir=project_dir, profiles_dir=project_dir,
                          dbt_executable=str(Path(sys.executable).parent / "dbt"))


def resources_for(environment: str) -> dict[str, dg.ConfigurableResource]:
    if environment == "local":
        return {"kafka": KafkaResource(), "servicing_db": ServicingDatabase(), "lake": LakeResource(),
                "iceberg": IcebergResource(), "quality": QualityResource(), "pd_settings": PdModelResource(),
                "engine": EngineResource(launcher="spark-submit"), "marts": MartsResource(), "dbt": dbt_cli()}
    if environment == "k8s":
        return {
            "kafka": KafkaResource(bootstrap_servers=dg.EnvVar("CARDO_KAFKA_BOOTSTRAP")),
            "servicing_db": ServicingDatabase(dsn=dg.EnvVar("CARDO_SERVICING_DSN")),
            "lake": LakeResource(root=dg.EnvVar("CARDO_LAKE_ROOT")),
            "iceberg": IcebergResource(catalog_type="rest", catalog_uri=dg.EnvVar("CARDO_ICEBERG_CATALOG_URI"),
                                       warehouse=dg.EnvVar("CARDO_ICEBERG_WAREHOUSE")),
            "quality": QualityResource(),
            "pd_settings": PdModelResource(tracking_uri=dg.EnvVar("CARDO_MLFLOW_TRACKING_URI"),
                                        oracle_from_simulator=False),
            "engine": EngineResource(launcher="k8s"),
            "marts": MartsResource(database=dg.EnvVar("CARDO_MARTS_DATABASE")),
            "dbt": dbt_cli(),
        }
    raise ValueError(f"CARDO_ENV must be 'local' or 'k8s', got {environment!r}")


def current_resources() -> dict[str, dg.ConfigurableResource]:
    """Called when the definitions are built (load time, not import time)."""
    return resources_for(os.environ.get("CARDO_ENV", "local"))
