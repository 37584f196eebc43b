"""The local stack: Postgres (servicing source), Kafka (KRaft), Kafka Connect with Debezium and an MLflow tracking
server, on 127.0.0.1; with `--spark`, a Spark standalone master and worker too (`stack.spark_cluster`).

`up` is idempotent (a running, healthy service is left alone), `down` stops exactly what `up` started, in
reverse order, and `status` reports health per service.
"""

from __future__ import annotations

from dataclasses import dataclass

from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.stack.mlflow_server import MlflowServer
from cardo_pipeline.stack.postgres import Postgres
from cardo_pipeline.stack.process import StackError
from cardo_pipeline.stack.services import Connect, Kafka
from cardo_pipeline.stack.spark_cluster import SparkCluster

__all__ = ["Stack", "StackError", "ServiceStatus"]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    endpoint: str
    detail: str = ""


class Stack:
    def __init__(self, settings: CardoSettings):
        self.settings = settings
        self.postgres = Postgres(settings)
        self.kafka = Kafka(settings)
        self.connect = Connect(settings)
        self.mlflow = MlflowServer(settings)
        self.spark = SparkCluster(settings)

    def up(self, log=print, *, spark: bool = False) -> None:
        self.settings.home.mkdir(parents=True, exist_ok=True)
        log(f"postgres   starting on {self.settings.host}:{self.settings.pg_port}")
        self.postgres.start()
        log(f"kafka      starting on {self.settings.kafka_bootstrap}")
        self.kafka.start()
        log(f"connect    starting on {self.connect.url} (Debezium connector servicing-postgres)")
        self.connect.start(drop_stale_slot=self._drop_slot)
        log(f"mlflow     starting on {self.mlflow.url}")
        self.mlflow.start()
        if spark:
            self.up_spark(log)
        log(f"stack is up; MLflow UI on {self.mlflow.url}")

    def up_spark(self, log=print) -> None:
        log(f"spark      starting a master on {self.spark.master_url} and a worker "
            f"({self.settings.spark_worker_cores} core, {self.settings.spark_worker_memory})")
        self.spark.start()
        log(f"spark      up: CARDO_SPARK_MASTER={self.spark.master_url}; UI {self.spark.webui_url}")

    def down(self, log=print) -> None:
        worker, master = self.spark.stop()
        if worker or master:
            log(f"{'spark':<10} stopped")
        for name, service in (
            ("mlflow", self.mlflow),
            ("connect", self.connect),
            ("kafka", self.kafka),
            ("postgres", self.postgres),
        ):
            stopped = service.stop()
            log(f"{name:<10} {'stopped' if stopped else 'was not running'}")

    def status(self, *, spark: bool | None = None) -> list[ServiceStatus]:
        """Health per service; the Spark master and worker when asked (`spark`) or when `up --spark` started them."""
        s = self.settings
        pg_running = self.postgres.data_dir.exists() and self.postgres.is_running()
        connect_status = self.connect.status() if self.connect.process.is_running() else None
        connect_detail = ""
        if connect_status:
            tasks = ",".join(t["state"] for t in connect_status.get("tasks", []))
            connect_detail = f"connector {connect_status['connector']['state']}, tasks {tasks or 'none'}"
        mlflow_running = self.mlflow.process.is_running()
        return [
            ServiceStatus(
                "postgres", pg_running, pg_running and self.postgres.healthy(), f"{s.host}:{s.pg_port}"
            ),
            ServiceStatus("kafka", self.kafka.process.is_running(), self.kafka.healthy(), s.kafka_bootstrap),
            ServiceStatus(
                "connect",
                self.connect.process.is_running(),
                self.connect.connector_running(),
                self.connect.url,
                connect_detail,
            ),
            ServiceStatus(
                "mlflow",
                mlflow_running,
                mlflow_running and self.mlflow.healthy(),
                self.mlflow.url,
                f"backend {s.mlflow_backend_uri}, artifacts {s.mlflow_artifacts_dir}",
            ),
            *(self._spark_status() if (self.spark.started() if spark is None else spark) else []),
        ]

    def _spark_status(self) -> list[ServiceStatus]:
        s, cluster = self.settings, self.spark
        master_running, worker_running = cluster.master.is_running(), cluster.worker.is_running()
        return [
            ServiceStatus("spark-master", master_running, master_running and cluster.master_healthy(),
                          cluster.master_url, cluster.detail() if master_running else ""),
            ServiceStatus("spark-worker", worker_running, worker_running and cluster.worker_healthy(),
                          f"{s.host}:{s.spark_worker_port}",
                          f"{s.spark_worker_cores} core(s), {s.spark_worker_memory}"),
        ]

    def _drop_slot(self, slot: str) -> None:
        with self.postgres.connect(autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
