"""A Spark standalone cluster on 127.0.0.1 for `cardo stack up --spark`: one master and one small worker, both run by
the pyspark wheel's `spark-class` (no Spark download), each a ManagedProcess with a pid file and a log.

The worker offers `CARDO_SPARK_WORKER_CORES` (1) cores and `CARDO_SPARK_WORKER_MEMORY` (2g) to executors: a 2-core
laptop keeps a core for the driver and Dagster. Jobs reach it with `CARDO_SPARK_MASTER=spark://127.0.0.1:27077`
(`CARDO_SPARK_MASTER_PORT`); the master's web UI (`CARDO_SPARK_MASTER_WEBUI_PORT`, 28077) lists workers and
applications, and its `/json/` view is the health check.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.stack.jvm import java_bin
from cardo_pipeline.stack.process import ManagedProcess, StackError, port_is_open, wait_until

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# Heap of each daemon (the master and the worker process themselves; executors get what the worker offers)
DAEMON_MEMORY = "512m"
# Measured on a 2-core machine: the master answers in ~4 s, the worker registers ~4 s later
START_TIMEOUT_S = 90


def spark_home() -> Path:
    """The pyspark wheel's folder: Spark's jars, `bin/spark-class` and `bin/spark-submit`."""
    import pyspark

    return Path(pyspark.__file__).parent


def spark_bin(name: str) -> str:
    return str(spark_home() / "bin" / name)


class SparkCluster:
    def __init__(self, settings: CardoSettings):
        self.settings = settings
        self.root = settings.home / "spark"
        run, logs = settings.home / "run", settings.home / "logs"
        self.master = ManagedProcess("spark-master", run / "spark-master.pid", logs / "spark-master.log")
        self.worker = ManagedProcess("spark-worker", run / "spark-worker.pid", logs / "spark-worker.log")

    @property
    def master_url(self) -> str:
        return self.settings.spark_master_url

    @property
    def webui_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.spark_master_webui_port}"

    def started(self) -> bool:
        """Whether `up --spark` started (part of) the cluster: its pid files are there."""
        return self.master.pid_file.exists() or self.worker.pid_file.exists()

    def _env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": s.host,  # every socket of the daemons and their executors on the loopback
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            # Executors run the jobs' Python (the decoder in mapInArrow) with the interpreter the driver names;
            # this one is the fallback
            "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
            # Finished applications' folders (jars, logs) are removed after a day
            "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.appDataTtl=86400",
        }

    def master_argv(self) -> list[str]:
        s = self.settings
        return [spark_bin("spark-class"), MASTER_CLASS, "--host", s.host, "--port", str(s.spark_master_port),
                "--webui-port", str(s.spark_master_webui_port)]

    def worker_argv(self) -> list[str]:
        s = self.settings
        return [spark_bin("spark-class"), WORKER_CLASS, "--host", s.host, "--port", str(s.spark_worker_port),
                "--webui-port", str(s.spark_worker_webui_port), "--cores", str(s.spark_worker_cores),
                "--memory", s.spark_worker_memory, "--work-dir", str(self.root / "work"), self.master_url]

    def start(self) -> None:
        """Start the master, then the worker; each is left alone when already running (idempotent)."""
        java_bin()  # a clear error when Java is missing, before anything starts
        s = self.settings
        if not self.master.is_running():
            for port, variable in ((s.spark_master_port, "CARDO_SPARK_MASTER_PORT"),
                                   (s.spark_master_webui_port, "CARDO_SPARK_MASTER_WEBUI_PORT")):
                _require_free(s.host, port, variable)
            self.master.start(self.master_argv(), env=self._env(), cwd=s.home)
            wait_until(lambda: self.master_healthy() or self.master.exited_early(), START_TIMEOUT_S,
                       "the Spark master", self.master.log_file)
            if not self.master.is_running():
                raise StackError(f"the Spark master exited during start-up: see {self.master.log_file}")
        if not self.worker.is_running():
            for port, variable in ((s.spark_worker_port, "CARDO_SPARK_WORKER_PORT"),
                                   (s.spark_worker_webui_port, "CARDO_SPARK_WORKER_WEBUI_PORT")):
                _require_free(s.host, port, variable)
            (self.root / "work").mkdir(parents=True, exist_ok=True)
            self.worker.start(self.worker_argv(), env=self._env(), cwd=s.home)
            wait_until(lambda: self.worker_healthy() or self.worker.exited_early(), START_TIMEOUT_S,
                       "the Spark worker", self.worker.log_file)
            if not self.worker.is_running():
                raise StackError(f"the Spark worker exited during start-up: see {self.worker.log_file}")

    def stop(self) -> tuple[bool, bool]:
        """Stop the worker (its executors go with it), then the master; (worker was running, master was)."""
        return self.worker.stop(timeout=20), self.master.stop(timeout=20)

    def master_state(self) -> dict | None:
        """The master's `/json/` view (status, workers, applications), or None when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=2) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def master_healthy(self) -> bool:
        state = self.master_state()
        return bool(state) and state.get("status") == "ALIVE"

    def alive_workers(self, state: dict | None = None) -> list[dict]:
        state = self.master_state() if state is None else state
        return [w for w in (state or {}).get("workers", []) if w.get("state") == "ALIVE"]

    def worker_healthy(self) -> bool:
        """Our worker (its port) is registered with the master and alive."""
        port = self.settings.spark_worker_port
        return self.worker.is_running() and any(w.get("port") == port for w in self.alive_workers())

    def detail(self) -> str:
        state = self.master_state()
        if not state:
            return ""
        workers = self.alive_workers(state)
        cores = sum(w.get("cores", 0) for w in workers)
        memory = sum(w.get("memory", 0) for w in workers)
        running = len(state.get("activeapps", []))
        return (f"{len(workers)} worker(s), {cores} core(s), {memory} MB; {running} running application(s); "
                f"UI {self.webui_url}")


def _require_free(host: str, port: int, variable: str) -> None:
    if port_is_open(host, port):
        raise StackError(
            f"port {port} is in use by a process cardo did not start: stop it or choose another with {variable}")
