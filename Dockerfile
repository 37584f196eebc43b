# User-code image for the official Dagster Helm chart (deploy/helm/values.yaml): serves the cardo_pipeline code
# location over gRPC. Spark steps run in their own pods through Dagster Pipes, so no JVM is needed here.
# The decoder's Rust crate (native/) is built into a wheel in a throwaway stage, so the image has no toolchain.
FROM python:3.11-slim AS native
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends curl ca-certificates gcc libc6-dev \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH
COPY native /src/native
RUN pip wheel --no-deps -w /wheels /src/native

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 CARDO_ENV=k8s
WORKDIR /opt/cardo

COPY pyproject.toml requirements.lock README.md ./
COPY cardo_pipeline ./cardo_pipeline
COPY dbt_project ./dbt_project
COPY deploy ./deploy
COPY workspace.yaml ./
COPY --from=native /wheels /wheels
RUN pip install -c requirements.lock . /wheels/*.whl && useradd --uid 10001 --create-home cardo
USER cardo

EXPOSE 3030
CMD ["dagster", "api", "grpc", "--module-name", "cardo_pipeline.definitions", "--host", "0.0.0.0", "--port", "3030"]
