"""The local MLflow tracking server: `mlflow server` on 127.0.0.1, tracking and registry in $CARDO_HOME/mlflow.db.

Artifacts are proxied: clients upload and download them through the server (`mlflow-artifacts:/` URIs), which
stores them under $CARDO_HOME/mlflow-artifacts, so a client needs nothing but the tracking URL. One uvicorn worker
and no job runner keep it at about 560 MB RSS (the `mlflow server` parent ~280 MB plus the worker ~280 MB); with
MLflow's defaults (4 workers, the GenAI job runner with seven huey consumers) it is over 2 GB.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.stack.process import ManagedProcess, StackError, port_is_open, wait_until

# Measured on a 2-core machine: the first start creates and migrates the SQLite database, ~15-19 s until /health
# answers; later starts ~8 s. 120 s leaves room for a slow disk or a loaded CI runner.
START_TIMEOUT_S = 120


class MlflowServer:
    def __init__(self, settings: CardoSettings):
        self.settings = settings
        self.process = ManagedProcess(
            "mlflow", settings.home / "run" / "mlflow.pid", settings.home / "logs" / "mlflow.log"
        )

    @property
    def url(self) -> str:
        """The local server's URL (the stack runs it whatever CARDO_MLFLOW_TRACKING_URI says)."""
        return f"http://{self.settings.host}:{self.settings.mlflow_port}"

    def argv(self) -> list[str]:
        s = self.settings
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            s.mlflow_backend_uri,
            "--artifacts-destination",
            str(s.mlflow_artifacts_dir),
            "--serve-artifacts",
            "--host",
            s.host,
            "--port",
            str(s.mlflow_port),
            "--workers",
            "1",
            # The security middleware's defaults (Host headers and CORS origins of localhost and 127.0.0.1 on any
            # port) already admit a browser and the Python client on 127.0.0.1: no --allowed-hosts needed.
        ]

    def start(self) -> None:
        s = self.settings
        if self.process.is_running():
            return
        if port_is_open(s.host, s.mlflow_port):
            raise StackError(
                f"port {s.mlflow_port} is in use by a process cardo did not start: "
                "stop it or choose another with CARDO_MLFLOW_PORT"
            )
        s.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            # The job runner serves GenAI features (judges, scorers, trace rollups) this project does not use; it
            # starts seven huey consumer processes, ~1.5 GB.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            # No usage reports from a local tool (Dagster's telemetry is off too); this also covers the UI's.
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        env.pop("MLFLOW_TRACKING_URI", None)  # the server's own store is --backend-store-uri, nothing else
        # The server resolves nothing relative to its cwd when given both locations; $CARDO_HOME all the same.
        self.process.start(self.argv(), env=env, cwd=s.home)
        wait_until(
            lambda: self.healthy() or self.process.exited_early(),
            START_TIMEOUT_S,
            "MLflow tracking server",
            self.process.log_file,
        )
        if not self.process.is_running():
            raise StackError(f"MLflow tracking server exited during start-up: see {self.process.log_file}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> bool:
        # SIGTERM goes to the whole process group: the `mlflow server` parent (which waits for its worker) and the
        # uvicorn worker, which finishes its requests and exits within a second or two.
        return self.process.stop()
