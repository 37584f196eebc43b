"""Launch `pipes` of the Spark engine: the raw and curated steps as spark-submit jobs under Dagster Pipes, on
`local[*]` and on a real standalone cluster (`cardo stack up --spark`'s master and worker), from the Kafka sensor's
run request to the curated tables, equal to the local engine; the Kubernetes driver pod as a spec (no cluster here);
the settings and their errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster_k8s.pipes import build_pod_body
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR
from deltalake import DeltaTable

from cardo_pipeline.cdc.encode import EnvelopeEncoder
from cardo_pipeline.curate.storage import CuratedLocations, CuratedStore
from cardo_pipeline.defs.curated.assets import build_curated_assets
from cardo_pipeline.defs.keys import curated_history_key, curated_key, raw_key
from cardo_pipeline.defs.raw.assets import build_raw_asset
from cardo_pipeline.defs.raw.checks import build_raw_checks
from cardo_pipeline.defs.raw.sensor import END_OFFSETS_TAG, build_kafka_offsets_sensor
from cardo_pipeline.defs.resources import EngineResource, KafkaResource, LakeResource, resources_for
from cardo_pipeline.engine import launch_from_env
from cardo_pipeline.ingest.replay import replay_file
from cardo_pipeline.settings import CardoSettings, ConfigError
from cardo_pipeline.simulator import simulate
from cardo_pipeline.spark.pipes import K8S_MASTER, K8sSparkLauncher, SparkSubmitLauncher
from cardo_pipeline.spark.pipes_steps import CONSISTENCY_CHECK, CuratedStep, RawStep, step_from_extras
from cardo_pipeline.stack import Stack, StackError
from cardo_pipeline.stack.spark_cluster import SparkCluster
from cardo_pipeline.tables import TABLES_BY_NAME
from cardo_pipeline_tests.raw_helpers import encode_changes, fresh_prefix, loan_row, produce_book, produce_raw

LOANS = TABLES_BY_NAME["loans"]
VERSION_COLUMNS = ["valid_from_lsn", "valid_from_offset", "valid_to_lsn", "valid_to_offset", "is_current"]
_OFFSET = int(os.environ.get("CARDO_TEST_PORT_OFFSET", "0"))
# The test cluster's ports, beside the test stack's (conftest), shifted like them
CLUSTER_PORTS = {"CARDO_SPARK_MASTER_PORT": 27177, "CARDO_SPARK_MASTER_WEBUI_PORT": 28177,
                 "CARDO_SPARK_WORKER_PORT": 27178, "CARDO_SPARK_WORKER_WEBUI_PORT": 28178}


# --- helpers ----------------------------------------------------------------------------------------------------

def curated_rows(lake: Path | str) -> tuple[list[dict], list[dict]]:
    names, key = LOANS.column_names, list(LOANS.primary_key)
    locations = CuratedLocations.in_lake(str(lake), LOANS)
    current = pl.read_delta(locations.current).select(names).sort(key).to_dicts()
    history = (pl.read_delta(locations.history).filter(~pl.col("is_deleted")).select([*names, *VERSION_COLUMNS])
               .sort([*key, "valid_from_lsn", "valid_from_offset"]).to_dicts())
    return current, history


def raw_rows(lake: Path | str) -> list[dict]:
    return (pl.from_arrow(DeltaTable(f"{lake}/raw/loans").to_pyarrow_table()).drop("ingested_at")
            .sort(["partition", "offset"]).to_dicts())


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, object]]:
    """Asset key -> its materialization's metadata values, as the run recorded them."""
    return {event.asset_key.to_user_string(): {k: v.value for k, v in event.materialization.metadata.items()}
            for event in result.get_asset_materialization_events()}


def check_results(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}


class _FileSink:
    """The simulator's transactions as a console consumer's dump of their Debezium messages (`cardo replay`)."""

    def __init__(self, path: Path):
        self.encoder, self.lines = EnvelopeEncoder("pipes"), []
        self.path = path

    def write(self, transactions) -> int:
        changes = 0
        for transaction in transactions:
            self.lines += [m.value or b"null" for m in self.encoder.encode_transaction(transaction)]
            changes += len(transaction.changes)
        self.path.write_bytes(b"\n".join(self.lines) + b"\n")
        return changes

    def write_truth(self, rows) -> None:
        pass


# --- (a) local[*]: a curated apply launched through Pipes --------------------------------------------------------

@pytest.mark.spark
def test_a_pipes_launch_of_the_curated_apply_equals_the_local_engine_and_reports_through_pipes(
        tmp_path: Path) -> None:
    dump = tmp_path / "book.jsonl"
    simulate(_FileSink(dump), loans=40, months=6, seed=11)
    local_lake, pipes_lake = tmp_path / "local", tmp_path / "pipes"
    for lake in (local_lake, pipes_lake):  # the same raw tables in both lakes
        replay_file(dump, lake)
    CuratedStore(LOANS, CuratedLocations.in_lake(str(local_lake), LOANS)).apply()

    engine = EngineResource(default="spark", launch="pipes", pipes_master="local[*]")
    started = time.monotonic()
    result = dg.materialize([build_curated_assets(LOANS)], resources={
        "lake": LakeResource(root=str(pipes_lake)), "engine": engine})
    seconds = time.monotonic() - started
    assert result.success

    assert curated_rows(pipes_lake) == curated_rows(local_lake)
    metadata = materializations(result)
    current, history = metadata["curated/loans"], metadata["curated/loans_history"]
    for reported in (current, history):
        assert reported["engine"] == "spark" and reported["launch"] == "pipes"
        assert reported["spark_master"] == "local[*]" and reported["spark_application_id"].startswith("local-")
        assert reported["events_applied"] == DeltaTable(f"{pipes_lake}/raw/loans").count()
    assert current["dagster/row_count"] == len(curated_rows(local_lake)[0]) > 0
    assert current["rows_inserted"] > 0 and history["history_rows_written"] > 0
    check = check_results(result)[("curated/loans", CONSISTENCY_CHECK)]
    assert check.passed and check.metadata["rows_compared"].value == current["dagster/row_count"]
    print(json.dumps({"test": "local[*]", "run_id": result.run_id, "seconds": round(seconds, 1),
                      "current": current, "check": {k: v.value for k, v in check.metadata.items()}}, default=str))


# --- (b) the standalone cluster, from the Kafka sensor to curated ------------------------------------------------

@pytest.fixture(scope="module")
def spark_cluster(stack: Stack, test_env: dict[str, str]):
    """A real Spark master and worker (`cardo stack up --spark`) on the test stack's home, stopped at the end."""
    settings = CardoSettings.from_env({**test_env, **{k: str(v + _OFFSET) for k, v in CLUSTER_PORTS.items()}})
    cluster = SparkCluster(settings)
    cluster.stop()
    started = time.monotonic()
    try:
        cluster.start()
        print(f"spark cluster up in {time.monotonic() - started:.1f} s at {cluster.master_url}")
        yield cluster
    finally:  # no pid file left behind: the stack's own status tests must not see a Spark cluster
        cluster.stop()
    assert not cluster.master.is_running() and not cluster.worker.is_running()


@pytest.mark.stack
@pytest.mark.spark
def test_the_standalone_cluster_is_managed_like_the_other_services(spark_cluster: SparkCluster) -> None:
    pids = spark_cluster.master.read_pid(), spark_cluster.worker.read_pid()
    spark_cluster.start()  # idempotent: a healthy cluster is left alone
    assert (spark_cluster.master.read_pid(), spark_cluster.worker.read_pid()) == pids
    statuses = {s.name: s for s in Stack(spark_cluster.settings).status()}
    assert statuses["spark-master"].healthy and statuses["spark-worker"].healthy
    assert statuses["spark-master"].endpoint == spark_cluster.master_url
    assert "1 worker(s), 1 core(s)" in statuses["spark-master"].detail
    for process in (spark_cluster.master, spark_cluster.worker):
        assert process.log_file.exists() and process.pid_file.exists()


@pytest.mark.stack
@pytest.mark.spark
def test_the_sensors_run_on_the_standalone_cluster_through_pipes_equals_the_local_engine(
        spark_cluster: SparkCluster, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One shuffle partition per core of the one-core worker (4 by default: ~20 s more of tasks queued on one core)
    monkeypatch.setenv("CARDO_SPARK_SHUFFLE_PARTITIONS", "1")
    prefix = fresh_prefix("pipes")
    topic = f"{prefix}.public.loans"
    produce_book(kafka_bootstrap, prefix, loans=30, months=4, seed=13)
    sensor = build_kafka_offsets_sensor([LOANS], interval_seconds=5, follows=lambda table: [
        curated_key(table), curated_history_key(table)])
    kafka = KafkaResource(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    offsets_check = [c for c in build_raw_checks(LOANS) if "offsets_exactly_once" in
                     {k.name for k in c.check_keys}]
    assets = [build_raw_asset(LOANS), build_curated_assets(LOANS)]

    def run(lake: Path, engine: EngineResource, request: dg.RunRequest, instance: dg.DagsterInstance):
        definitions = dg.Definitions(assets=assets, asset_checks=offsets_check, resources={
            "kafka": kafka, "lake": LakeResource(root=str(lake)), "engine": engine})
        job = definitions.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(asset_selection=list(request.asset_selection), tags=request.tags,
                                      instance=instance)

    spark_lake, local_lake = tmp_path / "spark", tmp_path / "local"
    with dg.DagsterInstance.ephemeral() as instance:
        tick = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, resources={"kafka": kafka, "lake": LakeResource(root=str(spark_lake))}))
        (request,) = tick.run_requests
        assert request.asset_selection == [raw_key(LOANS), curated_key(LOANS), curated_history_key(LOANS)]
        requested = json.loads(request.tags[END_OFFSETS_TAG])[topic]
        # Messages that arrive after the tick are the next run's: the run lands exactly what the sensor saw
        produce_raw(kafka_bootstrap, topic, encode_changes(LOANS, prefix, [loan_row(90_000 + i) for i in range(3)]))

        engine = EngineResource(default="spark", launch="pipes", pipes_master=spark_cluster.master_url)
        started = time.monotonic()
        result = run(spark_lake, engine, request, instance)
        seconds = time.monotonic() - started
        assert result.success
        local = run(local_lake, EngineResource(default="local"), request, instance)
        assert local.success

    assert raw_rows(spark_lake) == raw_rows(local_lake)
    assert curated_rows(spark_lake) == curated_rows(local_lake)
    spark_metadata, local_metadata = materializations(result), materializations(local)
    raw = spark_metadata["raw/loans"]
    assert raw["offsets_committed"] == requested == local_metadata["raw/loans"]["offsets_committed"]
    assert raw["messages_consumed"] == sum(requested.values()) - sum(raw["offsets_start"].values())
    assert raw["lag_messages"] == 3
    application = raw["spark_application_id"]
    for reported in spark_metadata.values():
        assert reported["engine"] == "spark" and reported["launch"] == "pipes"
        assert reported["spark_master"] == spark_cluster.master_url
        assert reported["spark_application_id"].startswith("app-")
    assert spark_metadata["curated/loans"]["spark_application_id"] != application  # one job per step
    for key in ("messages_consumed", "rows_landed", "dead_lettered", "dagster/row_count"):
        assert raw[key] == local_metadata["raw/loans"][key], key
    for key in ("events_applied", "rows_inserted", "rows_updated", "rows_deleted", "dagster/row_count"):
        assert spark_metadata["curated/loans"][key] == local_metadata["curated/loans"][key], key
    checks = check_results(result)
    assert checks[("curated/loans", CONSISTENCY_CHECK)].passed  # reported by the job through Pipes
    assert checks[("raw/loans", "offsets_exactly_once")].passed  # Dagster's own check, on what the job wrote
    assert {k: c.passed for k, c in check_results(local).items()} == {k: c.passed for k, c in checks.items()}
    print(json.dumps({"test": "standalone", "run_id": result.run_id, "seconds": round(seconds, 1),
                      "metadata": spark_metadata,
                      "checks": {f"{a}:{n}": {"passed": c.passed, **{k: v.value for k, v in c.metadata.items()}}
                                 for (a, n), c in checks.items()}}, default=str))


# --- (c) units: the Kubernetes driver pod, the step's extras, the settings ---------------------------------------

def test_the_k8s_launcher_is_a_driver_pod_running_spark_submit_in_client_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARDO_ENV", "k8s")
    monkeypatch.setenv("CARDO_SPARK_IMAGE", "ghcr.io/cardo/cardo-pipeline:0.1.0")
    monkeypatch.setenv("CARDO_LAKE_ROOT", "s3://cardo-lake/lake")
    monkeypatch.setenv("CARDO_SPARK_CONF", '{"spark.executor.memory": "4g"}')
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not forwarded: it comes from the secret")
    launcher = resources_for("k8s")["engine"].spark_launcher()  # chosen per environment in the one place
    assert isinstance(launcher, K8sSparkLauncher)
    step = RawStep("loans", "raw/loans", "servicing.public.loans", "kafka:9092", "s3://cardo-lake/lake/raw/loans",
                   "s3://cardo-lake/lake/raw/_dead_letter", target_end={0: 120, 1: 98})
    pipes_env = {DAGSTER_PIPES_CONTEXT_ENV_VAR: "context", DAGSTER_PIPES_MESSAGES_ENV_VAR: "messages"}
    # What PipesK8sClient.run creates, without a cluster: its own pod builder over our spec and environment
    pod = build_pod_body(pod_name="dagster-run-raw-loans", image=None, command=None,
                         env_vars={**pipes_env, **launcher.client().env}, base_pod_meta=launcher.pod_meta(step),
                         base_pod_spec=launcher.pod_spec(step))
    assert pod.spec.service_account_name == "cardo-spark" and pod.spec.restart_policy == "Never"
    assert pod.metadata.labels["cardo/table"] == "loans"
    (container,) = pod.spec.containers
    assert container.image == "ghcr.io/cardo/cardo-pipeline:0.1.0"
    command = container.command
    assert command[:5] == ["spark-submit", "--master", K8S_MASTER, "--deploy-mode", "client"]
    assert command[-1] == "/opt/cardo/cardo_pipeline/spark/pipes_job.py"
    conf = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "--conf")
    assert conf["spark.kubernetes.executor.podTemplateFile"] == "/opt/cardo/deploy/k8s/spark/executor-pod-template.yaml"
    assert conf["spark.kubernetes.container.image"] == container.image
    assert conf["spark.driver.host"] == "$(CARDO_POD_IP)" and conf["spark.driver.bindAddress"] == "0.0.0.0"
    assert conf["spark.kubernetes.driver.pod.name"] == "$(CARDO_POD_NAME)"
    assert conf["spark.sql.extensions"].startswith("io.delta.sql.DeltaSparkSessionExtension")
    assert conf["spark.executor.memory"] == "4g"  # CARDO_SPARK_CONF still wins
    assert "spark.jars" not in conf  # the image carries them in Spark's jars folder
    env = {e.name: e for e in container.env}
    assert env["CARDO_POD_IP"].value_from.field_ref.field_path == "status.podIP"
    assert env[DAGSTER_PIPES_CONTEXT_ENV_VAR].value == "context"  # the Pipes session reaches the driver
    assert env["CARDO_LAKE_ROOT"].value == "s3://cardo-lake/lake" and env["CARDO_ENV"].value == "k8s"
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert [s.secret_ref.name for s in container.env_from] == ["cardo-secrets"]
    assert container.resources.limits["memory"] == "3Gi"
    assert pod.spec.security_context.run_as_non_root and container.security_context.read_only_root_filesystem
    assert [m.mount_path for m in container.volume_mounts] == ["/tmp"]  # Spark's scratch space, read-write


def test_the_k8s_launcher_names_the_missing_image_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARDO_SPARK_IMAGE", raising=False)
    step = CuratedStep.of("loans", "curated/loans", "curated/loans_history",
                          CuratedLocations.in_lake("s3://lake", LOANS))
    with pytest.raises(ConfigError, match="CARDO_SPARK_IMAGE"):
        K8sSparkLauncher().pod_spec(step)
    assert resources_for("local")["engine"].spark_launcher() == SparkSubmitLauncher()
    assert EngineResource(pipes_master="spark://127.0.0.1:27077").spark_launcher().master == "spark://127.0.0.1:27077"
    with pytest.raises(ConfigError, match="engine.launcher"):
        EngineResource(launcher="yarn").spark_launcher()


def test_a_step_travels_as_pipes_extras_unchanged() -> None:
    raw = RawStep("loans", "raw/loans", "p.public.loans", "127.0.0.1:1", "/l/raw/loans", "/l/raw/_dead_letter",
                  target_end={1: 7, 0: 12})
    curated = CuratedStep.of("loans", "curated/loans", "curated/loans_history", CuratedLocations.in_lake("/l", LOANS))
    for step in (raw, curated, RawStep("loans", "raw/loans", "t", "b", "r", "d")):
        assert step_from_extras(json.loads(json.dumps(step.to_extras()))) == step
    with pytest.raises(ValueError, match="not a source table"):
        step_from_extras({**raw.to_extras(), "table": "invoices"})
    with pytest.raises(ValueError, match="unknown step"):
        step_from_extras({"step": "features"})


def test_the_launch_setting_and_the_cluster_settings_name_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert launch_from_env({}) == "session" and launch_from_env({"CARDO_SPARK_LAUNCH": "pipes"}) == "pipes"
    with pytest.raises(ConfigError, match="CARDO_SPARK_LAUNCH"):
        launch_from_env({"CARDO_SPARK_LAUNCH": "step_launcher"})
    monkeypatch.setenv("CARDO_SPARK_LAUNCH", "yarn")
    with pytest.raises(ConfigError, match="CARDO_SPARK_LAUNCH"):
        EngineResource(default="spark").spark_launch()
    assert EngineResource(launch="pipes").spark_launch() == "pipes"  # the resource's config wins
    with pytest.raises(ConfigError, match="engine.launch"):
        EngineResource(launch="cluster").spark_launch()
    settings = CardoSettings.from_env({})
    assert settings.spark_master_url == "spark://127.0.0.1:27077"
    assert (settings.spark_worker_cores, settings.spark_worker_memory) == (1, "2g")
    for variable, value in (("CARDO_SPARK_MASTER_PORT", "spark"), ("CARDO_SPARK_WORKER_WEBUI_PORT", "0"),
                            ("CARDO_SPARK_WORKER_CORES", "0"), ("CARDO_SPARK_WORKER_MEMORY", "lots")):
        with pytest.raises(ConfigError, match=variable):
            CardoSettings.from_env({variable: value})


def test_the_cluster_says_java_is_missing_before_starting_anything(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    cluster = SparkCluster(CardoSettings.from_env({"CARDO_HOME": str(tmp_path)}))
    with pytest.raises(StackError, match="Java not found"):
        cluster.start()
    assert not cluster.started()


def test_the_cluster_runs_the_wheels_spark_class_on_the_loopback(tmp_path: Path) -> None:
    settings = CardoSettings.from_env({"CARDO_HOME": str(tmp_path), "CARDO_SPARK_MASTER_PORT": "27999"})
    cluster = SparkCluster(settings)
    master, worker = cluster.master_argv(), cluster.worker_argv()
    assert master[0].endswith("pyspark/bin/spark-class") and master[1] == "org.apache.spark.deploy.master.Master"
    assert master[master.index("--host") + 1] == "127.0.0.1" and "27999" in master
    assert worker[1] == "org.apache.spark.deploy.worker.Worker" and worker[-1] == "spark://127.0.0.1:27999"
    assert worker[worker.index("--cores") + 1] == "1" and worker[worker.index("--memory") + 1] == "2g"
    assert not cluster.started() and cluster.stop() == (False, False)
    assert [s.name for s in Stack(settings).status(spark=True)][-2:] == ["spark-master", "spark-worker"]
