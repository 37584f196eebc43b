"""The local stack: real services up and healthy, schema migrated once, clear one-line errors, clean shutdown."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.stack import Stack, StackError
from cardo_pipeline.stack.jvm import java_bin
from cardo_pipeline.stack.mlflow_server import MlflowServer
from cardo_pipeline.stack.postgres import apply_migrations, migration_files
from cardo_pipeline.stack.process import ManagedProcess
from cardo_pipeline.stack.services import Kafka
from cardo_pipeline.tables import SOURCE_TABLES

PG_TYPE_NAMES = {
    "timestamptz": "timestamp with time zone",
    "char(2)": "character(2)",
    "char(3)": "character(3)",
}


@pytest.mark.stack
def test_every_service_is_healthy(stack: Stack) -> None:
    statuses = {s.name: s for s in stack.status()}
    assert set(statuses) == {"postgres", "kafka", "connect", "mlflow"}
    assert all(s.running and s.healthy for s in statuses.values()), statuses
    assert "RUNNING" in statuses["connect"].detail
    assert statuses["mlflow"].endpoint == stack.settings.mlflow_tracking_uri


@pytest.mark.stack
def test_mlflow_server_tracks_runs_and_stores_artifacts_under_cardo_home(
    stack: Stack, mlflow_tracking_uri: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_tracking_uri)
    experiment_id = client.create_experiment(f"stack-check-{os.getpid()}-{tmp_path.name}")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_metric(run_id, "auc", 0.75)
    client.log_text(run_id, "the stack's MLflow server stores this\n", "checks/note.txt")
    client.set_terminated(run_id)
    # Proxied artifacts: the client only knows the server, which resolves mlflow-artifacts:/ to its own directory.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

    assert client.get_run(run_id).data.metrics == {"auc": 0.75}
    assert [a.path for a in client.list_artifacts(run_id, "checks")] == ["checks/note.txt"]
    downloaded = Path(client.download_artifacts(run_id, "checks/note.txt", str(tmp_path)))
    assert downloaded.read_text() == "the stack's MLflow server stores this\n"

    artifacts_dir = stack.settings.mlflow_artifacts_dir
    assert artifacts_dir.is_relative_to(stack.settings.home)
    [stored] = [p for p in artifacts_dir.rglob("note.txt") if run_id in p.parts]
    assert stored.read_text() == downloaded.read_text()


@pytest.mark.stack
def test_schema_matches_the_table_registry_and_migrations_apply_once(stack: Stack) -> None:
    assert apply_migrations(stack.postgres) == []  # already applied at `up`
    with psycopg.connect(stack.settings.pg_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM cardo_meta.schema_migrations ORDER BY 1")]
        assert versions == [v for v, _ in migration_files()]
        for table in SOURCE_TABLES:
            rows = conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod), NOT attnotnull FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (f"public.{table.name}",),
            ).fetchall()
            expected = [(c.name, PG_TYPE_NAMES.get(c.pg_type, c.pg_type), c.nullable) for c in table.columns]
            assert rows == expected, table.name
        storage = conn.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = 'public.loans'::regclass "
            "AND attname = 'servicer_notes'"
        ).fetchone()[0]
        assert storage == "e"  # external: long notes are TOASTed uncompressed, as the CDC contract expects


@pytest.mark.parametrize(("variable", "service"), [("CARDO_KAFKA_PORT", Kafka), ("CARDO_MLFLOW_PORT", MlflowServer)])
def test_a_busy_port_gives_one_clear_line(tmp_path: Path, variable: str, service) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = CardoSettings.from_env({"CARDO_HOME": str(tmp_path), variable: str(port)})
        with pytest.raises(StackError, match=rf"port {port} is in use .* {variable}") as info:
            service(settings).start()
        assert "\n" not in str(info.value)
        assert not service(settings).process.pid_file.exists()  # nothing was started


def test_missing_java_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StackError, match="Java not found: install OpenJDK 17"):
        java_bin()


def test_managed_process_stops_exactly_what_it_started(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", tmp_path / "sleeper.pid", tmp_path / "sleeper.log")
    pid = proc.start(["sleep", "300"])
    assert proc.is_running() and proc.read_pid() == pid
    # A pid file whose process start time does not match is not ours: it must not be signalled.
    stranger = ManagedProcess("stranger", tmp_path / "stranger.pid", tmp_path / "stranger.log")
    stranger.pid_file.write_text(f'{{"pid": {os.getpid()}, "start_ticks": 1}}')
    assert not stranger.is_running() and stranger.stop() is False
    assert proc.stop(timeout=5) is True
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert not proc.pid_file.exists()


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def _free_ports(count: int) -> list[int]:
    """Ports free right now, all different (the sockets are held open together while choosing)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.stack
@pytest.mark.slow
def test_cli_up_status_down_leaves_no_process(test_env: dict[str, str]) -> None:
    home = Path(test_env["CARDO_HOME"]).with_name(Path(test_env["CARDO_HOME"]).name + "-lifecycle")
    shutil.rmtree(home, ignore_errors=True)
    # Free ports, not fixed ones: two sessions (CARDO_TEST_PORT_OFFSET) may run this test at the same time.
    pg_port, kafka_port, controller_port, connect_port, mlflow_port = _free_ports(5)
    env = {
        **os.environ,
        "CARDO_HOME": str(home),
        "CARDO_PG_PORT": str(pg_port),
        "CARDO_KAFKA_PORT": str(kafka_port),
        "CARDO_KAFKA_CONTROLLER_PORT": str(controller_port),
        "CARDO_CONNECT_PORT": str(connect_port),
        "CARDO_MLFLOW_PORT": str(mlflow_port),
    }
    env.pop("CARDO_MLFLOW_TRACKING_URI", None)
    # The uvicorn worker of `mlflow server` does not name CARDO_HOME on its command line: look for its port too.
    mlflow_worker = f"--port {mlflow_port} "
    cardo = [sys.executable, "-m", "cardo_pipeline.cli"]
    try:
        up = subprocess.run([*cardo, "stack", "up"], env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr
        status = subprocess.run(
            [*cardo, "stack", "status"], env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0 and status.stdout.count("healthy") == 4, status.stdout
        assert f"http://127.0.0.1:{mlflow_port}" in up.stdout
        again = subprocess.run([*cardo, "stack", "up"], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr  # idempotent
        assert _processes_mentioning(str(home))
        assert len(_processes_mentioning(mlflow_worker)) == 2  # `mlflow server` and its uvicorn worker
    finally:
        down = subprocess.run([*cardo, "stack", "down"], env=env, capture_output=True, text=True, timeout=180)
    assert down.returncode == 0, down.stderr
    assert _processes_mentioning(str(home)) == []
    assert _processes_mentioning(mlflow_worker) == []
    status = subprocess.run([*cardo, "stack", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "stopped" in status.stdout
