"""Where the local stack and the lake live, and on which ports: read from the environment when asked, never at import.

Every path and port has a `CARDO_*` environment variable; `CardoSettings.from_env()` validates them and names the
offending variable when one is wrong. Production points the lake and catalogs at object storage through the same
variables (see deploy/helm/values.yaml).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cardo_pipeline.tables import DEFAULT_TOPIC_PREFIX, lake_uri, topic_name


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


DEFAULT_SENSOR_INTERVAL_S = 5


def sensor_interval_seconds() -> int:
    # 5 s: a change reaches the curated tables in ~28 s at the 95th percentile (`cardo bench freshness`); a tick
    # costs one end-offsets request and a look at each raw table's last commit.
    raw = os.environ.get("CARDO_SENSOR_INTERVAL_SECONDS", str(DEFAULT_SENSOR_INTERVAL_S))
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"CARDO_SENSOR_INTERVAL_SECONDS must be a whole number of seconds >= 1, got {raw!r}")
    return int(raw)


DEFAULT_FRESHNESS_HOURS = 24


def freshness_hours() -> float:
    """How long a curated table may go without an update before its freshness check warns
    (`CARDO_FRESHNESS_HOURS`): a quiet source is no fault, so a day by default."""
    raw = os.environ.get("CARDO_FRESHNESS_HOURS", str(DEFAULT_FRESHNESS_HOURS))
    try:
        hours = float(raw)
    except ValueError:
        hours = 0.0
    if hours <= 0:
        raise ConfigError(f"CARDO_FRESHNESS_HOURS must be a positive number of hours, got {raw!r}")
    return hours


def ensure_dagster_home(dagster_home: Path) -> None:
    """The instance directory, with a dagster.yaml that turns telemetry off (Dagster's defaults otherwise)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        # No telemetry, and no newsletter dialog over the UI of a local tool.
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")


def json_object_setting(env: Mapping[str, str], name: str, what: str) -> dict:
    """The JSON object in variable `name` (empty when unset); anything else names the variable and says what it
    should hold (`what`)."""
    raw = env.get(name) or "{}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{name} must be a JSON object of {what}: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object of {what}, got {raw!r}")
    return value


def _port(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a TCP port number, got {raw!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name} must be between 1 and 65535, got {port}")
    return port


def _whole(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {raw!r}")
    return int(raw)


def _memory(env: dict[str, str], name: str, default: str) -> str:
    """A JVM memory size as Spark takes it: a whole number with m or g (`1536m`, `2g`)."""
    raw = (env.get(name) or default).strip().lower()
    if not re.fullmatch(r"[1-9][0-9]*[mg]", raw):
        raise ConfigError(f"{name} must be a memory size such as 1536m or 2g, got {raw!r}")
    return raw


def _path(env: dict[str, str], name: str, default: Path) -> Path:
    raw = env.get(name)
    return Path(raw).expanduser().absolute() if raw else default


@dataclass(frozen=True)
class CardoSettings:
    home: Path
    lake_dir: Path
    jvm_cache: Path
    dagster_home: Path
    host: str
    pg_port: int
    kafka_port: int
    kafka_controller_port: int
    connect_port: int
    mlflow_port: int = 25050
    # A remote tracking server (production) instead of the local stack's `mlflow server`.
    mlflow_tracking_override: str | None = None
    database: str = "servicing"
    pg_user: str = "cardo"
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    # The standalone Spark cluster of `cardo stack up --spark` (a master and one small worker, ARCHITECTURE 14)
    spark_master_port: int = 27077
    spark_master_webui_port: int = 28077
    spark_worker_port: int = 27078
    spark_worker_webui_port: int = 28078
    spark_worker_cores: int = 1
    spark_worker_memory: str = "2g"  # what the worker's executors may use together

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CardoSettings:
        env = dict(os.environ if env is None else env)
        home = _path(env, "CARDO_HOME", Path.cwd() / ".cardo")
        return cls(
            home=home,
            lake_dir=_path(env, "CARDO_LAKE_DIR", home / "lake"),
            # Jars are shared by every checkout on the machine, so a fresh clone (CI) does not resolve them again.
            jvm_cache=_path(env, "CARDO_JVM_CACHE", Path.home() / ".cache" / "cardo" / "jvm"),
            dagster_home=_path(env, "DAGSTER_HOME", home / "dagster"),
            host="127.0.0.1",
            pg_port=_port(env, "CARDO_PG_PORT", 54329),
            kafka_port=_port(env, "CARDO_KAFKA_PORT", 29092),
            kafka_controller_port=_port(env, "CARDO_KAFKA_CONTROLLER_PORT", 29093),
            connect_port=_port(env, "CARDO_CONNECT_PORT", 28083),
            mlflow_port=_port(env, "CARDO_MLFLOW_PORT", 25050),
            mlflow_tracking_override=env.get("CARDO_MLFLOW_TRACKING_URI") or None,
            topic_prefix=env.get("CARDO_TOPIC_PREFIX") or DEFAULT_TOPIC_PREFIX,
            spark_master_port=_port(env, "CARDO_SPARK_MASTER_PORT", 27077),
            spark_master_webui_port=_port(env, "CARDO_SPARK_MASTER_WEBUI_PORT", 28077),
            spark_worker_port=_port(env, "CARDO_SPARK_WORKER_PORT", 27078),
            spark_worker_webui_port=_port(env, "CARDO_SPARK_WORKER_WEBUI_PORT", 28078),
            spark_worker_cores=_whole(env, "CARDO_SPARK_WORKER_CORES", 1),
            spark_worker_memory=_memory(env, "CARDO_SPARK_WORKER_MEMORY", "2g"),
        )

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def pg_dsn(self) -> str:
        return f"host={self.host} port={self.pg_port} dbname={self.database} user={self.pg_user}"

    @property
    def iceberg_catalog_uri(self) -> str:
        return f"sqlite:///{self.home / 'iceberg' / 'catalog.db'}"

    @property
    def mlflow_backend_uri(self) -> str:
        """The local `mlflow server`'s backend store: runs, metrics and the model registry."""
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Where the local `mlflow server` stores the artifacts it serves (clients upload them through it)."""
        return self.home / "mlflow-artifacts"

    @property
    def mlflow_tracking_uri(self) -> str:
        """The tracking server clients talk to: the local stack's, or CARDO_MLFLOW_TRACKING_URI when set."""
        return self.mlflow_tracking_override or f"http://{self.host}:{self.mlflow_port}"

    @property
    def spark_master_url(self) -> str:
        """The standalone Spark master of `cardo stack up --spark` (what CARDO_SPARK_MASTER points at to use it)."""
        return f"spark://{self.host}:{self.spark_master_port}"

    def topic(self, table: str) -> str:
        return topic_name(self.topic_prefix, table)

    def lake_table(self, path: Sequence[str]) -> str:
        """The location of the table at `path` in the local lake (`SourceTable.layout`, `DEAD_LETTER_PATH`)."""
        return lake_uri(str(self.lake_dir), path)
