# syntax=docker/dockerfile:1
# The user-code image for the official Dagster Helm chart (deploy/helm/values.yaml). One image for three roles:
#   - the code location's gRPC server (CMD below; the chart's user-code deployment),
#   - the run workers K8sRunLauncher starts for it (the chart passes the same image on),
#   - the Spark engine on Kubernetes: the driver in a Pipes-launched pod and its executors
#     (deploy/k8s/spark/executor-pod-template.yaml), with Debian's JRE and the jars of deploy/spark/pom.xml.
# Build stages do the compiling and downloading; the final stage holds no compiler, no Maven and no pip cache,
# runs as a non-root user and works with a read-only root filesystem (the chart mounts /tmp and DAGSTER_HOME).
#   docker build -t ghcr.io/cardo/cardo-pipeline:0.1.0 .

# 1. The decoder's Rust crate (native/) as an abi3 wheel (cp311 and newer), built where the Rust toolchain is and
#    thrown away with it. Debian bookworm's python3 is 3.11, the runtime's version.
FROM rust:1.95.0-slim-bookworm AS native
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008 (pin apt versions) is ignored: Debian replaces package versions with every point release and security fix
# and drops the old ones from the mirror, so pins would break every rebuild; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir maturin==1.16.0
COPY native /src/native
RUN /opt/maturin/bin/maturin build --release --locked --compatibility linux \
        --manifest-path /src/native/Cargo.toml --out /wheels

# 2. The Spark engine's jars (Delta, Iceberg, the Kafka source) resolved by Maven from deploy/spark/pom.xml exactly
#    as cardo_pipeline/stack/jvm.py does locally, with the marker jvm.py compares (the pom's sha256, 16 hex digits,
#    no newline), so `resolve_spark_jars` (a SparkSession in a run) finds them resolved and never calls Maven.
#    Stage 3 also links them into pyspark's own jars folder, where spark-submit's driver pod and the executors
#    (launch `pipes`, cardo_pipeline/spark/pipes.py) find them without spark.jars.
FROM maven:3.9.11-eclipse-temurin-17 AS jars
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY deploy/spark/pom.xml /src/deploy/spark/pom.xml
RUN mvn -q -B -f /src/deploy/spark/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory=/jvm/spark-lib \
    && ls /jvm/spark-lib/delta-spark_*.jar /jvm/spark-lib/iceberg-spark-runtime-*.jar >/dev/null \
    && printf '%s' "$(sha256sum /src/deploy/spark/pom.xml | cut -c1-16)" > /jvm/spark-lib.sha

# 3. The Python environment, pinned by requirements.lock, and the project at /opt/cardo. The project is installed
#    in editable mode on purpose: the code finds deploy/ (the Spark pom, the Connect templates) and dbt_project/
#    beside the package, so /opt/cardo is laid out like a checkout. `dbt parse` writes the manifest the dbt assets
#    load, so the read-only image never parses at run time.
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DBT_SEND_ANONYMOUS_USAGE_STATS=false
WORKDIR /opt/cardo
RUN python -m venv /opt/venv
COPY pyproject.toml requirements.lock README.md workspace.yaml ./
COPY cardo_pipeline ./cardo_pipeline
COPY --from=native /wheels /wheels
RUN /opt/venv/bin/pip install -c requirements.lock -e . /wheels/*.whl
COPY dbt_project ./dbt_project
COPY deploy ./deploy
COPY --from=jars /jvm /opt/cardo/jvm
# The engine's jars go on Spark's own classpath too; the lock file jvm.py takes beside them is a link into /tmp,
# writable under a read-only root filesystem. The dbt manifest and the bytecode are made here, once.
RUN ln -s /opt/cardo/jvm/spark-lib/*.jar /opt/venv/lib/python3.11/site-packages/pyspark/jars/ \
    && ln -s /tmp/cardo-jvm.lock jvm/.lock
RUN /opt/venv/bin/dbt parse --quiet --project-dir dbt_project --profiles-dir dbt_project --target-path target \
    && test -s dbt_project/target/manifest.json \
    && rm -rf dbt_project/logs \
    && /opt/venv/bin/python -m compileall -q cardo_pipeline \
    && chmod 0755 deploy/k8s/spark/executor-entrypoint.sh

# 4. The runtime: Python 3.11, Debian's JRE 17 for Spark, the venv and /opt/cardo, owned by root and read-only to
#    the non-root user that runs everything.
# Keep the Python base equal to the build stage's (the venv's interpreter links into it).
FROM python:3.11.14-slim-bookworm
# DL3008 ignored as in the first stage: the base image tag pins the Debian release, the mirror keeps no old versions.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cardo \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin cardo
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/cardo /opt/cardo
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    CARDO_ENV=k8s \
    CARDO_HOME=/tmp/cardo \
    CARDO_JVM_CACHE=/opt/cardo/jvm \
    CARDO_DBT_PROJECT_DIR=/opt/cardo/dbt_project \
    DBT_TARGET_PATH=/tmp/dbt-target \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    MPLCONFIGDIR=/tmp/matplotlib \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/opt/venv/bin/python
WORKDIR /opt/cardo
USER 10001:10001

EXPOSE 3030
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s \
    CMD ["dagster", "api", "grpc-health-check", "--port", "3030"]
CMD ["dagster", "api", "grpc", "--module-name", "cardo_pipeline.definitions", "--host", "0.0.0.0", "--port", "3030"]
