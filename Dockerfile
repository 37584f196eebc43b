# User-code image for the official Dagster Helm chart (deploy/helm/values.yaml): serves the cardo_pipeline code
# location over gRPC. Spark steps run in their own pods through Dagster Pipes, so no JVM is needed here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 CARDO_ENV=k8s
WORKDIR /opt/cardo

COPY pyproject.toml requirements.lock README.md ./
COPY cardo_pipeline ./cardo_pipeline
COPY dbt_project ./dbt_project
COPY deploy ./deploy
COPY workspace.yaml ./
RUN pip install -c requirements.lock . && useradd --uid 10001 --create-home cardo
USER cardo

EXPOSE 3030
CMD ["dagster", "api", "grpc", "--module-name", "cardo_pipeline.definitions", "--host", "0.0.0.0", "--port", "3030"]
