#!/bin/bash
# Starts a Spark executor in the cardo-pipeline image, the role Spark's own images give their entrypoint's
# `executor` mode: Spark on Kubernetes runs the executor container with the single argument `executor` and passes
# everything else as environment variables (SPARK_DRIVER_URL, SPARK_EXECUTOR_ID, ..., the JVM options as
# SPARK_JAVA_OPT_0, _1, ... in order). Referenced as `command` by executor-pod-template.yaml.
set -euo pipefail

if [ "${1:-}" != "executor" ]; then
  echo "usage: $0 executor (started by Spark on Kubernetes, which sets the SPARK_* environment)" >&2
  exit 64
fi

: "${SPARK_HOME:?SPARK_HOME is unset (the image sets it to the pyspark package folder)}"
# pyspark's jars folder, where the image links the engine's jars (deploy/spark/pom.xml) in, then anything extra.
classpath="${SPARK_HOME}/jars/*"
if [ -n "${SPARK_EXTRA_CLASSPATH:-}" ]; then
  classpath="${classpath}:${SPARK_EXTRA_CLASSPATH}"
fi

# SPARK_JAVA_OPT_<n>, in the numeric order of n.
java_opts=()
while IFS= read -r name; do
  java_opts+=("${!name}")
done < <(compgen -e | grep '^SPARK_JAVA_OPT_[0-9][0-9]*$' | sort -t_ -k4 -n)

exec java "${java_opts[@]}" \
  "-Xms${SPARK_EXECUTOR_MEMORY}" "-Xmx${SPARK_EXECUTOR_MEMORY}" \
  -cp "${classpath}" \
  org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
  --driver-url "${SPARK_DRIVER_URL}" \
  --executor-id "${SPARK_EXECUTOR_ID}" \
  --cores "${SPARK_EXECUTOR_CORES}" \
  --app-id "${SPARK_APPLICATION_ID}" \
  --hostname "${SPARK_EXECUTOR_POD_IP}" \
  --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
  --podName "${SPARK_EXECUTOR_POD_NAME}"
