"""Shared fixtures: one real local stack per test session, isolated from a developer's running stack.

The test stack has its own CARDO_HOME (wiped at session start) and its own ports, so `make test` never touches
the data of `make demo` / `make dev`. It is started lazily by the first test that needs it and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.stack import Stack

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# CARDO_TEST_PORT_OFFSET lets two test sessions (say, two worktrees) run side by side without sharing services.
_OFFSET = int(os.environ.get("CARDO_TEST_PORT_OFFSET", "0"))
TEST_STACK_ENV = {
    "CARDO_HOME": str(PROJECT_ROOT / (f".cardo-test-{_OFFSET}" if _OFFSET else ".cardo-test")),
    "CARDO_PG_PORT": str(54339 + _OFFSET),
    "CARDO_KAFKA_PORT": str(29192 + _OFFSET),
    "CARDO_KAFKA_CONTROLLER_PORT": str(29193 + _OFFSET),
    "CARDO_CONNECT_PORT": str(28183 + _OFFSET),
    "CARDO_MLFLOW_PORT": str(25150 + _OFFSET),
}


@pytest.fixture(scope="session")
def test_env() -> dict[str, str]:
    """The environment of the test stack: a subprocess given this talks to the test services."""
    env = {**os.environ, **TEST_STACK_ENV}
    env.pop("CARDO_MLFLOW_TRACKING_URI", None)  # the test stack's own server, never a remote one
    env["DAGSTER_HOME"] = str(Path(TEST_STACK_ENV["CARDO_HOME"]) / "dagster")
    return env


@pytest.fixture(scope="session")
def cardo_settings(test_env) -> CardoSettings:
    return CardoSettings.from_env(test_env)


@pytest.fixture(scope="session")
def stack(cardo_settings: CardoSettings):
    stack = Stack(cardo_settings)
    stack.down(log=lambda _: None)  # a previous session killed hard may have left services behind
    shutil.rmtree(cardo_settings.home, ignore_errors=True)
    stack.up(log=lambda _: None)
    yield stack
    stack.down(log=lambda _: None)


@pytest.fixture(scope="session")
def servicing_dsn(stack: Stack) -> str:
    return stack.settings.pg_dsn


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Stack) -> str:
    return stack.settings.kafka_bootstrap


@pytest.fixture(scope="session")
def mlflow_tracking_uri(stack: Stack) -> str:
    """The test stack's MLflow tracking server (http://127.0.0.1:<port>)."""
    return stack.settings.mlflow_tracking_uri


@pytest.fixture(scope="session")
def spark(cardo_settings: CardoSettings):
    """One local Spark session (local[2]) for the whole test session: a JVM start costs about 10 s."""
    from cardo_pipeline.spark.session import SparkSettings, spark_session, stop_spark

    session = spark_session(cardo_settings, SparkSettings())
    yield session
    stop_spark()


# Each engine in turn, Spark's marked (`-m "not spark"` leaves it out, and its session is started only by the tests
# that run)
ENGINES = ["local", pytest.param("spark", marks=pytest.mark.spark)]


@pytest.fixture(params=ENGINES)
def engine_name(request) -> str:
    """A test runs once per engine; the Spark run on the shared test session (not a second JVM)."""
    if request.param == "spark":
        request.getfixturevalue("spark")
    return request.param


@pytest.fixture(scope="module", params=["native", "python"])
def decoder_path(request):
    """Run a decoder test module on both paths: the Rust crate's fast path and the pure Python one."""
    from cardo_pipeline.cdc import native

    if request.param == "native":
        assert native.enabled(), "the cardo_native crate is not built: run `make venv`"
    saved = os.environ.get("CARDO_NATIVE_DECODER")
    os.environ["CARDO_NATIVE_DECODER"] = "1" if request.param == "native" else "0"
    yield request.param
    if saved is None:
        os.environ.pop("CARDO_NATIVE_DECODER")
    else:
        os.environ["CARDO_NATIVE_DECODER"] = saved
