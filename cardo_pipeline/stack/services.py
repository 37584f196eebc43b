"""The JVM services of the local stack: a one-node KRaft Kafka broker and a Kafka Connect worker running Debezium.

Config templates live in deploy/ (the same keys a production deployment uses); placeholders are filled from
CardoSettings. Each service is a ManagedProcess with a pid file under $CARDO_HOME/run.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from string import Template

from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.stack.jvm import PROJECT_ROOT, java_command, resolve_jars
from cardo_pipeline.stack.process import ManagedProcess, StackError, port_is_open, wait_until
from cardo_pipeline.tables import SOURCE_TABLES

DEPLOY = PROJECT_ROOT / "deploy"
CONNECTOR_NAME = "servicing-postgres"
SLOT_NAME = "cardo_servicing"


def render(template: Path, target: Path, **values: object) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(Template(template.read_text()).substitute({k: str(v) for k, v in values.items()}))
    return target


def _require_free(settings: CardoSettings, port: int, variable: str) -> None:
    if port_is_open(settings.host, port):
        raise StackError(
            f"port {port} is in use by a process cardo did not start: stop it or choose another with {variable}"
        )


class Kafka:
    def __init__(self, settings: CardoSettings):
        self.settings = settings
        self.root = settings.home / "kafka"
        self.process = ManagedProcess(
            "kafka", settings.home / "run" / "kafka.pid", settings.home / "logs" / "kafka.log"
        )

    def start(self) -> None:
        s = self.settings
        if self.process.is_running():
            return
        _require_free(s, s.kafka_port, "CARDO_KAFKA_PORT")
        _require_free(s, s.kafka_controller_port, "CARDO_KAFKA_CONTROLLER_PORT")
        lib = resolve_jars(s)
        config = render(
            DEPLOY / "kafka" / "server.properties",
            self.root / "server.properties",
            host=s.host,
            kafka_port=s.kafka_port,
            controller_port=s.kafka_controller_port,
            log_dirs=self.root / "data",
        )
        log_config = DEPLOY / "kafka" / "log4j2.yaml"
        if not (self.root / "data" / "meta.properties").exists():
            cluster_id = (
                subprocess.run(
                    java_command(
                        lib, "kafka.tools.StorageTool", "random-uuid", heap="128m", log_config=log_config
                    ),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            formatted = subprocess.run(
                java_command(
                    lib,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "--ignore-formatted",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    heap="128m",
                    log_config=log_config,
                ),
                capture_output=True,
                text=True,
            )
            if formatted.returncode != 0:
                raise StackError(f"formatting the Kafka log dir failed: {formatted.stderr.strip()[-300:]}")
        self.process.start(java_command(lib, "kafka.Kafka", str(config), heap="768m", log_config=log_config))
        wait_until(
            lambda: self.healthy() or self.process.exited_early(), 90, "Kafka broker", self.process.log_file
        )
        if not self.process.is_running():
            raise StackError(f"Kafka broker exited during start-up: see {self.process.log_file}")

    def healthy(self) -> bool:
        if not port_is_open(self.settings.host, self.settings.kafka_port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap}).list_topics(timeout=3)
            return True
        except Exception:  # noqa: BLE001 - any client error means "not ready yet"
            return False

    def stop(self) -> bool:
        return self.process.stop()


class Connect:
    def __init__(self, settings: CardoSettings):
        self.settings = settings
        self.root = settings.home / "connect"
        self.offsets_file = self.root / "offsets.dat"
        self.process = ManagedProcess(
            "connect", settings.home / "run" / "connect.pid", settings.home / "logs" / "connect.log"
        )

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.connect_port}"

    def start(self, drop_stale_slot) -> None:
        s = self.settings
        if self.process.is_running():
            return
        _require_free(s, s.connect_port, "CARDO_CONNECT_PORT")
        lib = resolve_jars(s)
        if not self.offsets_file.exists():
            # The replication slot outlives Connect's offsets: without offsets, start from a clean snapshot.
            drop_stale_slot(SLOT_NAME)
        worker = render(
            DEPLOY / "connect" / "worker.properties",
            self.root / "worker.properties",
            host=s.host,
            kafka_port=s.kafka_port,
            connect_port=s.connect_port,
            offsets_file=self.offsets_file,
        )
        connector = render(
            DEPLOY / "connect" / "servicing-postgres.properties",
            self.root / "servicing-postgres.properties",
            host=s.host,
            pg_port=s.pg_port,
            pg_user=s.pg_user,
            database=s.database,
            topic_prefix=s.topic_prefix,
            table_include_list=",".join(f"public.{t.name}" for t in SOURCE_TABLES),
        )
        self.process.start(
            java_command(
                lib,
                "org.apache.kafka.connect.cli.ConnectStandalone",
                str(worker),
                str(connector),
                heap="768m",
                log_config=DEPLOY / "kafka" / "log4j2.yaml",
            )
        )
        wait_until(
            lambda: self.connector_running() or self.process.exited_early(),
            120,
            "Kafka Connect with the Debezium connector",
            self.process.log_file,
        )
        if not self.process.is_running():
            raise StackError(f"Kafka Connect exited during start-up: see {self.process.log_file}")

    def status(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/connectors/{CONNECTOR_NAME}/status", timeout=2) as resp:
                return json.load(resp)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def connector_running(self) -> bool:
        status = self.status()
        if not status:
            return False
        tasks = status.get("tasks", [])
        return (
            status["connector"]["state"] == "RUNNING"
            and bool(tasks)
            and all(t["state"] == "RUNNING" for t in tasks)
        )

    def stop(self) -> bool:
        return self.process.stop()
