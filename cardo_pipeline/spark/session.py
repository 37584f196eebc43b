"""One SparkSession per process, configured for the lake: Delta (deletion vectors, change data feed, app
transactions), the Iceberg runtime, and the Kafka source, with jars resolved by Maven (`stack.jvm`).

`CARDO_SPARK_MASTER` picks the cluster: `local[2]` by default (CI and laptops), `spark://host:7077` for a standalone
cluster, `k8s://...` on Kubernetes. Spark's own settings can be added with `CARDO_SPARK_CONF` (JSON object).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cardo_pipeline.settings import CardoSettings, ConfigError, json_object_setting

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[2]"
# Few, small partitions: a batch of a few hundred thousand events shuffles faster in 4 tasks than in Spark's 200
DEFAULT_SHUFFLE_PARTITIONS = 4
_lock = threading.Lock()


@dataclass(frozen=True)
class SparkSettings:
    master: str = DEFAULT_MASTER
    driver_memory: str = "2g"
    shuffle_partitions: int = DEFAULT_SHUFFLE_PARTITIONS
    extra_conf: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> SparkSettings:
        env = dict(os.environ if env is None else env)
        extra = json_object_setting(env, "CARDO_SPARK_CONF", "Spark settings")
        partitions = env.get("CARDO_SPARK_SHUFFLE_PARTITIONS", str(DEFAULT_SHUFFLE_PARTITIONS))
        if not partitions.isdigit() or int(partitions) < 1:
            raise ConfigError(f"CARDO_SPARK_SHUFFLE_PARTITIONS must be a whole number >= 1, got {partitions!r}")
        return cls(master=env.get("CARDO_SPARK_MASTER") or DEFAULT_MASTER,
                   driver_memory=env.get("CARDO_SPARK_DRIVER_MEMORY") or "2g",
                   shuffle_partitions=int(partitions), extra_conf={str(k): str(v) for k, v in extra.items()})


def spark_conf(settings: CardoSettings, spark: SparkSettings) -> dict[str, str]:
    """Every setting the session starts with (also what `spark-submit --conf` gets when a job runs elsewhere)."""
    from cardo_pipeline.stack.jvm import resolve_spark_jars

    jars = resolve_spark_jars(settings)
    return {"spark.jars": ",".join(str(j) for j in jars), **engine_conf(settings, spark)}


def engine_conf(settings: CardoSettings, spark: SparkSettings) -> dict[str, str]:
    """The settings beyond the jars (an image that carries the jars in Spark's own folder needs only these)."""
    return {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension,"
                                "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        "spark.default.parallelism": str(spark.shuffle_partitions),
        # Delta rebuilds a table's state before each commit in this many tasks (50 by default): for the small logs
        # of these tables that was most of a commit's time in local mode (~4 s a commit with 4, up to 3x with 50)
        "spark.databricks.delta.snapshotPartitions": str(spark.shuffle_partitions),
        "spark.driver.memory": spark.driver_memory,
        "spark.driver.host": settings.host,
        "spark.driver.bindAddress": settings.host,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Arrow between the JVM and Python: toPandas / createDataFrame / mapInArrow without row-by-row pickling
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        # The local engine's tables keep timestamps as UTC instants; Spark writes them the same way
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        **spark.extra_conf,
    }


def spark_session(settings: CardoSettings | None = None, spark: SparkSettings | None = None) -> SparkSession:
    """The process's session, started on first use (about 10 s: a JVM and the jars)."""
    with _lock:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            return active
        settings = settings or CardoSettings.from_env()
        spark = spark or SparkSettings.from_env()
        # Spark binds to the machine's address unless told; the stack lives on the loopback interface
        os.environ.setdefault("SPARK_LOCAL_IP", settings.host)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.master(spark.master).appName("cardo-pipeline")
        for key, value in spark_conf(settings, spark).items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("WARN")
        return session


def stop_spark() -> None:
    from pyspark.sql import SparkSession

    with _lock:
        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()
