"""What watches the tables between runs: Dagster's own freshness checks on the curated tables (with their sensor),
and a schedule that evaluates the Kafka lag checks and the dead-letter table's model.

Both start running: a freshness or lag warning nobody evaluates is no warning.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from cardo_pipeline.defs.keys import DEAD_LETTER_KEY, curated_history_key, curated_key, raw_key
from cardo_pipeline.defs.raw.checks import KAFKA_LAG_CHECK
from cardo_pipeline.tables import SourceTable

MONITORING_JOB = "quality_monitoring"
FRESHNESS_SENSOR = "curated_freshness_checks"


def build_monitoring(tables: list[SourceTable], freshness_hours: float, sensor_interval_s: int) -> dg.Definitions:
    freshness = dg.build_last_update_freshness_checks(
        assets=[key for t in tables for key in (curated_key(t), curated_history_key(t))],
        lower_bound_delta=timedelta(hours=freshness_hours),
    )
    freshness_sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=freshness, name=FRESHNESS_SENSOR, minimum_interval_seconds=max(60, sensor_interval_s),
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    job = dg.define_asset_job(
        MONITORING_JOB,
        selection=dg.AssetSelection.checks(
            *(dg.AssetCheckKey(raw_key(t), KAFKA_LAG_CHECK) for t in tables),
            dg.AssetCheckKey(DEAD_LETTER_KEY, "pandera_schema"),
        ),
        description="The Kafka lag of every topic and the dead-letter table's model, between the raw runs.",
    )
    schedule = dg.ScheduleDefinition(
        name=f"{MONITORING_JOB}_every_15_minutes", job=job, cron_schedule="*/15 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return dg.Definitions(asset_checks=freshness, sensors=[freshness_sensor], jobs=[job], schedules=[schedule])
