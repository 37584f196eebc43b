"""Launch `pipes` of the Spark engine, the Dagster side: a raw or curated step runs as a `spark-submit` job
(`pipes_job.py`) under a Dagster Pipes session, and its reports come back as the asset's results.

Dagster's step launchers are superseded by Pipes (dagster-pyspark 0.29 has none), so the launchers here are Pipes
clients with the command and pod built for Spark; the engine resource's `launcher` names one, set per environment in
`defs.resources.resources_for`:
- `SparkSubmitLauncher` (local): `PipesSubprocessClient` running the pyspark wheel's `bin/spark-submit` with
  `--master` from `engine.pipes_master` or `CARDO_SPARK_MASTER` (`local[*]`, or `spark://127.0.0.1:27077` for
  `cardo stack up --spark`),
  the jars resolved by Maven (`stack.jvm`) and the session's settings as `--conf`; the driver runs in client mode,
  a child of the Dagster step, so the Pipes variables reach it. Context and messages go through temp files.
- `K8sSparkLauncher` (Kubernetes): `PipesK8sClient` creating a pod (service account `cardo-spark`) that runs
  `spark-submit --master k8s://https://kubernetes.default.svc --deploy-mode client`: the driver is that pod, the
  executors are pods made from `deploy/k8s/spark/executor-pod-template.yaml` in the image. Context goes in an
  environment variable, messages come back in the pod's log.

The step (table, topic, locations, and the sensor's end offsets, `cardo/kafka_end_offsets`) travels as Pipes
extras; the job reports one materialization per asset of the step and the checks the asset declares.
"""

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.spark.pipes_steps import RawStep, Step, StepOutcome

K8S_MASTER = "k8s://https://kubernetes.default.svc"
IMAGE_ROOT = "/opt/cardo"  # where the image holds the checkout (Dockerfile's WORKDIR)
EXECUTOR_POD_TEMPLATE = f"{IMAGE_ROOT}/deploy/k8s/spark/executor-pod-template.yaml"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
Results = list[dg.MaterializeResult | dg.AssetCheckResult]
# The driver pod's own identity, from the downward API; Kubernetes expands $(NAME) in a container's command
POD_ENV = {"CARDO_POD_NAME": "metadata.name", "CARDO_POD_NAMESPACE": "metadata.namespace",
           "CARDO_POD_IP": "status.podIP"}


def job_path() -> str:
    """The job script in this installation (a checkout or site-packages)."""
    import cardo_pipeline.spark.pipes_job as job

    return job.__file__


def app_name(step: Step) -> str:
    return f"cardo-{step.step}-{step.table}"


def submit_command(spark_submit: str, master: str, conf: Mapping[str, str], job: str, name: str) -> list[str]:
    """`spark-submit` of the job in client mode: the driver is the submitting process (or pod)."""
    command = [spark_submit, "--master", master, "--deploy-mode", "client", "--name", name]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, job]


def outcome_results(outcome: StepOutcome) -> Results:
    """A step's reports as the asset's results (what the job's Pipes messages become on the Dagster side)."""
    results: Results = [
        dg.MaterializeResult(asset_key=dg.AssetKey.from_user_string(asset), metadata=_metadata(metadata))
        for asset, metadata in outcome.materializations.items()]
    results += [dg.AssetCheckResult(asset_key=dg.AssetKey.from_user_string(check.asset), check_name=check.name,
                                    passed=check.passed, metadata=_metadata(check.metadata))
                for check in outcome.checks]
    return results


def _metadata(values: Mapping[str, object]) -> dict[str, Any]:
    return {name: dg.MetadataValue.json(value) if isinstance(value, dict | list) else value
            for name, value in values.items()}


def _launched_results(invocation, step: Step) -> Results:
    """The job's reports; a job that ended without reporting one of its assets fails the step."""
    results = list(invocation.get_results(implicit_materializations=False))
    reported = {r.asset_key.to_user_string() for r in results if isinstance(r, dg.MaterializeResult) and r.asset_key}
    missing = [asset for asset in step.assets if asset not in reported]
    if missing:
        raise dg.Failure(f"the Spark job ended without reporting {', '.join(missing)}")
    return results


@dataclass(frozen=True)
class SparkSubmitLauncher:
    """`spark-submit` on this machine, a subprocess of the Dagster step, through `PipesSubprocessClient`."""

    master: str | None = None  # None: CARDO_SPARK_MASTER (local[2] by default; spark://127.0.0.1:27077 for the stack)

    def command(self, step: Step, settings: CardoSettings | None = None) -> list[str]:
        from cardo_pipeline.spark.session import SparkSettings, spark_conf
        from cardo_pipeline.stack.spark_cluster import spark_bin

        spark = SparkSettings.from_env()
        master = self.master or spark.master
        conf = {**spark_conf(settings or CardoSettings.from_env(), spark),
                "spark.pyspark.python": sys.executable,  # the driver and the executors' Python: this venv's
                "spark.log.level": "WARN", **spark.extra_conf}
        return submit_command(spark_bin("spark-submit"), master, conf, job_path(), app_name(step))

    def env(self, settings: CardoSettings | None = None) -> dict[str, str]:
        from cardo_pipeline.stack.spark_cluster import spark_home

        settings = settings or CardoSettings.from_env()
        return {"SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": settings.host,
                "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}

    def launch(self, context: dg.AssetExecutionContext, step: Step) -> Results:
        command = self.command(step)
        context.log.info(f"spark-submit --master {command[command.index('--master') + 1]} {step.step} step of "
                         f"{step.table}" + (f" up to {step.target_end}" if isinstance(step, RawStep) else ""))
        invocation = dg.PipesSubprocessClient(env=self.env()).run(context=context, command=command,
                                                                  extras=step.to_extras())
        return _launched_results(invocation, step)


@dataclass(frozen=True)
class K8sSparkLauncher:
    """A driver pod running `spark-submit --master k8s://... --deploy-mode client`, through `PipesK8sClient`;
    executors are pods from the executor pod template. The image comes from `CARDO_SPARK_IMAGE` when a step
    launches, so a run that never uses Spark needs none of this; Spark's own settings (executor count, memory)
    from `CARDO_SPARK_CONF` as for every launch."""

    image: str | None = None  # None: CARDO_SPARK_IMAGE (an image with Java, pyspark, the jars and this project)
    namespace: str | None = None  # None: CARDO_SPARK_NAMESPACE, else the run pod's own namespace
    service_account: str = "cardo-spark"  # may create, watch and delete executor pods in the namespace
    executor_pod_template: str = EXECUTOR_POD_TEMPLATE
    executor_instances: int = 2
    job: str = f"{IMAGE_ROOT}/cardo_pipeline/spark/pipes_job.py"
    # Secrets the driver gets as environment (object-store credentials, ...); executors get theirs from the template
    env_secrets: tuple[str, ...] = ("cardo-secrets",)
    # Variables of the Dagster step forwarded to the driver by prefix (the lake, Kafka and Spark settings)
    forward_env_prefixes: tuple[str, ...] = ("CARDO_",)
    # None: the image carries the Delta, Iceberg and Kafka jars in Spark's own jars folder
    jars: str | None = None
    driver_cpu: str = "1"
    driver_memory_limit: str = "3Gi"  # spark.driver.memory (CARDO_SPARK_DRIVER_MEMORY, 2g) and its overhead

    def resolved_image(self) -> str:
        from cardo_pipeline.settings import ConfigError

        image = self.image or os.environ.get("CARDO_SPARK_IMAGE")
        if not image:
            raise ConfigError("CARDO_SPARK_IMAGE must name the Spark job's image (or set engine.launcher.image)")
        return image

    def spark_conf(self, step: Step) -> dict[str, str]:
        from cardo_pipeline.spark.session import SparkSettings, engine_conf

        spark = SparkSettings.from_env()
        conf = {
            **engine_conf(CardoSettings.from_env(), spark),
            "spark.kubernetes.container.image": self.resolved_image(),
            "spark.kubernetes.namespace": "$(CARDO_POD_NAMESPACE)",
            # Executors are owned by the driver pod: deleting it (Pipes does when the step ends) deletes them
            "spark.kubernetes.driver.pod.name": "$(CARDO_POD_NAME)",
            "spark.kubernetes.executor.podTemplateFile": self.executor_pod_template,
            "spark.kubernetes.executor.podNamePrefix": app_name(step).replace("_", "-"),
            "spark.kubernetes.authenticate.caCertFile": f"{SERVICE_ACCOUNT}/ca.crt",
            "spark.kubernetes.authenticate.oauthTokenFile": f"{SERVICE_ACCOUNT}/token",
            "spark.executor.instances": str(self.executor_instances),
            # Executors reach the driver at the pod's IP on fixed ports (a network policy can name them)
            "spark.driver.host": "$(CARDO_POD_IP)",
            "spark.driver.bindAddress": "0.0.0.0",
            "spark.driver.port": "7078",
            "spark.blockManager.port": "7079",
            "spark.log.level": "WARN",
            **({"spark.jars": self.jars} if self.jars else {}),
            **spark.extra_conf,
        }
        return conf

    def command(self, step: Step) -> list[str]:
        return submit_command("spark-submit", K8S_MASTER, self.spark_conf(step), self.job, app_name(step))

    def forwarded_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        environ = os.environ if environ is None else environ
        return {name: value for name, value in sorted(environ.items())
                if name.startswith(tuple(self.forward_env_prefixes))}

    def pod_spec(self, step: Step) -> dict[str, Any]:
        """The driver pod's spec (PipesK8sClient adds the Pipes variables to its container and names the pod)."""
        env = [{"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in POD_ENV.items()]
        return {
            "serviceAccountName": self.service_account,  # its token lets the driver manage its executor pods
            "restartPolicy": "Never",
            # As the image's other pods run: non-root, read-only image, scratch space in /tmp (Spark's local dirs)
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "spark-driver",
                "image": self.resolved_image(),
                "command": self.command(step),
                "env": env,
                "envFrom": [{"secretRef": {"name": name}} for name in self.env_secrets],
                "ports": [{"name": "driver", "containerPort": 7078}, {"name": "blockmanager", "containerPort": 7079}],
                "resources": {"requests": {"cpu": self.driver_cpu, "memory": self.driver_memory_limit},
                              "limits": {"memory": self.driver_memory_limit}},
                "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                                    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "8Gi"}}],
        }

    def pod_meta(self, step: Step) -> dict[str, Any]:
        return {"labels": {"app.kubernetes.io/name": "cardo-spark-driver", "app.kubernetes.io/part-of": "cardo",
                           "cardo/step": step.step, "cardo/table": step.table}}

    def client(self):
        from dagster_k8s import PipesK8sClient

        return PipesK8sClient(env=self.forwarded_env())

    def launch(self, context: dg.AssetExecutionContext, step: Step) -> Results:
        context.log.info(f"driver pod for the {step.step} step of {step.table} on {K8S_MASTER}")
        namespace = self.namespace or os.environ.get("CARDO_SPARK_NAMESPACE") or None
        invocation = self.client().run(context=context, extras=step.to_extras(), namespace=namespace,
                                       base_pod_meta=self.pod_meta(step), base_pod_spec=self.pod_spec(step))
        return _launched_results(invocation, step)


SparkLauncher = SparkSubmitLauncher | K8sSparkLauncher
LAUNCHERS = ("spark-submit", "k8s")


def spark_launcher(name: str, field: str, *, master: str | None = None) -> SparkLauncher:
    """The launcher called `name` (`spark-submit`: on this machine, `k8s`: a driver pod); a bad name names
    `field`."""
    from cardo_pipeline.settings import ConfigError

    if name == "spark-submit":
        return SparkSubmitLauncher(master=master)
    if name == "k8s":
        return K8sSparkLauncher()
    raise ConfigError(f"{field} must be one of {', '.join(LAUNCHERS)}, got {name!r}")
