"""The code location: every domain's definitions merged, with the resources of the current environment.

`dagster dev -w workspace.yaml`, `dg dev` and `dg check defs` all load `defs` from here. Environment variables
are read when the definitions are built, never at import.
"""

from __future__ import annotations

import dagster as dg

from cardo_pipeline.defs.curated.assets import CURATED_ASSETS
from cardo_pipeline.defs.curated.checks import CURATED_CHECKS
from cardo_pipeline.defs.features.geo import GEO_ENRICHED, GEO_FEATURE_DEFS
from cardo_pipeline.defs.features.loans import build_loan_feature_defs, cutoff_partitions
from cardo_pipeline.defs.groups import CURATED, ICEBERG
from cardo_pipeline.defs.iceberg.assets import ICEBERG_DEFS
from cardo_pipeline.defs.keys import curated_history_key, curated_key, iceberg_key
from cardo_pipeline.defs.maintenance.jobs import TABLE_MAINTENANCE_SCHEDULE, table_maintenance
from cardo_pipeline.defs.marts.assets import build_marts_defs
from cardo_pipeline.defs.models.pd import build_pd_defs
from cardo_pipeline.defs.quality.monitoring import build_monitoring
from cardo_pipeline.defs.raw.assets import DEAD_LETTER_SPEC, RAW_ASSETS
from cardo_pipeline.defs.raw.checks import DEAD_LETTER_CHECKS, RAW_CHECKS
from cardo_pipeline.defs.raw.sensor import build_kafka_offsets_sensor
from cardo_pipeline.defs.reference.assets import REFERENCE_DEFS
from cardo_pipeline.defs.resources import current_resources
from cardo_pipeline.defs.sources import topics
from cardo_pipeline.settings import freshness_hours, sensor_interval_seconds
from cardo_pipeline.tables import SOURCE_TABLES

DEMO_JOB = "materialize_everything"


@dg.definitions
def defs() -> dg.Definitions:
    everything = dg.define_asset_job(
        DEMO_JOB,
        # The dead-letter table is written by the raw assets, never materialized on its own.
        selection=dg.AssetSelection.all(include_sources=True) - dg.AssetSelection.assets(DEAD_LETTER_SPEC.key),
        description="Observe the topics and materialize every asset.",
    )
    raw = dg.Definitions(
        assets=[*RAW_ASSETS, DEAD_LETTER_SPEC],
        asset_checks=[*RAW_CHECKS, *DEAD_LETTER_CHECKS],
        # a table's run carries its raw asset and what follows it, so one run takes a change to curated
        sensors=[build_kafka_offsets_sensor(list(SOURCE_TABLES), sensor_interval_seconds(), follows=lambda table: [
            curated_key(table), curated_history_key(table), iceberg_key(table)])],
    )
    # Curated and Iceberg come in the Kafka sensor's runs, and follow raw by their eager conditions when it is
    # materialized any other way; their sensor is on from the start (Dagster's default automation sensor starts
    # stopped) and ticks as often as the Kafka sensor.
    downstream = dg.AutomationConditionSensorDefinition(
        "curated_follows_raw",
        target=dg.AssetSelection.groups(CURATED, ICEBERG) | dg.AssetSelection.assets(*(s.key for s in GEO_ENRICHED)),
        default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=sensor_interval_seconds(),
        description="Applies new raw rows to the curated tables, then mirrors them into Iceberg and rebuilds the "
                    "geo-enriched borrowers and collaterals.",
    )
    curated = dg.Definitions(assets=CURATED_ASSETS, asset_checks=CURATED_CHECKS, sensors=[downstream])
    cutoffs = cutoff_partitions()
    return dg.Definitions.merge(
        topics.defs,
        raw,
        curated,
        ICEBERG_DEFS,
        REFERENCE_DEFS,
        GEO_FEATURE_DEFS,
        build_loan_feature_defs(cutoffs),
        build_pd_defs(cutoffs),
        build_marts_defs(),
        build_monitoring(list(SOURCE_TABLES), freshness_hours(), sensor_interval_seconds()),
        # Steps run in the run's own process: the multiprocess default starts a process per step, each importing
        # the code location again (2-3 s a step, a 28 s curated run for 1 s of work), and the heavy work already
        # has its own processes (partition workers, Spark through Pipes).
        dg.Definitions(jobs=[everything, table_maintenance], schedules=[TABLE_MAINTENANCE_SCHEDULE],
                       resources=current_resources(), executor=dg.in_process_executor),
    )
