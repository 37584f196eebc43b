"""Resources, chosen per environment in this one place. Asset keys never change with the environment.

Local (the default): every resource falls back to the local stack's CardoSettings, resolved when a run uses it,
never at import. Kubernetes (`CARDO_ENV=k8s`, set in deploy/helm/values.yaml): endpoints and storage come from
environment variables of the user-code pods via EnvVar.
"""

from __future__ import annotations

import os

import dagster as dg

from cardo_pipeline.settings import CardoSettings


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster holding the Debezium topics."""

    bootstrap_servers: str | None = None  # None: the local stack
    topic_prefix: str = "servicing"

    def bootstrap(self) -> str:
        return self.bootstrap_servers or CardoSettings.from_env().kafka_bootstrap

    def topic(self, table: str) -> str:
        return f"{self.topic_prefix}.public.{table}"


class ServicingDatabase(dg.ConfigurableResource):
    """The servicing Postgres, read only for reconciliation."""

    dsn: str | None = None  # None: the local stack

    def conninfo(self) -> str:
        return self.dsn or CardoSettings.from_env().pg_dsn


class LakeResource(dg.ConfigurableResource):
    """Where Delta tables live: `<root>/<asset key path>`, a folder locally, an object store URI in production."""

    root: str | None = None  # None: $CARDO_HOME/lake

    def location(self, *key_path: str) -> str:
        base = self.root or str(CardoSettings.from_env().lake_dir)
        return "/".join([base.rstrip("/"), *key_path])


def resources_for(environment: str) -> dict[str, dg.ConfigurableResource]:
    if environment == "local":
        return {"kafka": KafkaResource(), "servicing_db": ServicingDatabase(), "lake": LakeResource()}
    if environment == "k8s":
        return {
            "kafka": KafkaResource(bootstrap_servers=dg.EnvVar("CARDO_KAFKA_BOOTSTRAP")),
            "servicing_db": ServicingDatabase(dsn=dg.EnvVar("CARDO_SERVICING_DSN")),
            "lake": LakeResource(root=dg.EnvVar("CARDO_LAKE_ROOT")),
        }
    raise ValueError(f"CARDO_ENV must be 'local' or 'k8s', got {environment!r}")


def current_resources() -> dict[str, dg.ConfigurableResource]:
    """Called when the definitions are built (load time, not import time)."""
    return resources_for(os.environ.get("CARDO_ENV", "local"))
