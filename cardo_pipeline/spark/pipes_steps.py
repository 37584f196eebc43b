"""The raw and curated steps as the assets run them, and what they report, wherever the Spark driver is: in the
Dagster step's own process (launch `session`) or in a `spark-submit` job under Dagster Pipes (launch `pipes`,
`pipes_job.py`). One code path computes a step, its materialization metadata and the consistency check for both
launches, and the local engine reports through the same builders, so an asset's metadata has the same keys
whichever engine or launch ran it.

No Dagster here (the job imports only `dagster-pipes`), and no pyspark at import: a step is described by plain
values (`RawStep`, `CuratedStep`, sent to the job as Pipes extras) and reports plain values (`StepOutcome`:
metadata of JSON-able values, check results), which the Dagster side turns into MaterializeResult and
AssetCheckResult, and the job into Pipes messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from cardo_pipeline.curate.storage import ApplyReport, CuratedLocations
from cardo_pipeline.ingest.raw_ingest import IngestReport
from cardo_pipeline.tables import TABLES_BY_NAME

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

RAW, CURATED = "raw", "curated"
# The blocking check every curated apply reports with its materializations (declared on the curated multi-asset)
CONSISTENCY_CHECK = "current_agrees_with_history"
Log = Callable[[str], None]


@dataclass(frozen=True)
class RawStep:
    """Land `topic` in the raw table up to `target_end` (the sensor's end offsets; None: the end seen at the start)."""

    table: str
    asset: str  # the raw asset's key, as a user string ("raw/loans")
    topic: str
    bootstrap: str
    raw_uri: str
    dead_letter_uri: str
    target_end: dict[int, int] | None = None
    step: str = RAW

    @property
    def assets(self) -> list[str]:
        return [self.asset]

    def to_extras(self) -> dict:
        extras = asdict(self)
        if self.target_end is not None:  # JSON object keys are strings; from_extras turns them back
            extras["target_end"] = {str(p): int(o) for p, o in sorted(self.target_end.items())}
        return extras


@dataclass(frozen=True)
class CuratedStep:
    """Apply the raw versions not applied yet to the current and history tables."""

    table: str
    current_asset: str
    history_asset: str
    raw: str
    current: str
    history: str
    truncates: str
    step: str = CURATED

    @classmethod
    def of(cls, table: str, current_asset: str, history_asset: str, locations: CuratedLocations) -> CuratedStep:
        return cls(table, current_asset, history_asset, locations.raw, locations.current, locations.history,
                   locations.truncates)

    @property
    def locations(self) -> CuratedLocations:
        return CuratedLocations(self.raw, self.current, self.history, self.truncates)

    @property
    def assets(self) -> list[str]:
        return [self.current_asset, self.history_asset]

    def to_extras(self) -> dict:
        return asdict(self)


Step = RawStep | CuratedStep


def step_from_extras(extras: Mapping[str, object]) -> Step:
    """The step a job was launched for, from its Pipes extras (`to_extras`); a malformed one raises ValueError."""
    values = dict(extras)
    kind = values.get("step")
    try:
        if kind == RAW:
            target = values.get("target_end")
            values["target_end"] = None if target is None else {int(p): int(o) for p, o in target.items()}
            step: Step = RawStep(**values)
        elif kind == CURATED:
            step = CuratedStep(**values)
        else:
            raise ValueError(f"unknown step {kind!r}: expected {RAW!r} or {CURATED!r}")
    except TypeError as error:
        raise ValueError(f"malformed {kind} step in the Pipes extras: {error}") from None
    if step.table not in TABLES_BY_NAME:
        raise ValueError(f"{step.table!r} is not a source table")
    return step


@dataclass(frozen=True)
class CheckOutcome:
    asset: str
    name: str
    passed: bool
    metadata: dict[str, object]


@dataclass
class StepOutcome:
    """What a step reports: metadata per asset it materialized (asset key user string -> metadata) and checks."""

    materializations: dict[str, dict[str, object]] = field(default_factory=dict)
    checks: list[CheckOutcome] = field(default_factory=list)

    def with_metadata(self, extra: Mapping[str, object]) -> StepOutcome:
        """The same outcome with `extra` added to every materialization's metadata."""
        return StepOutcome({asset: {**metadata, **extra} for asset, metadata in self.materializations.items()},
                           list(self.checks))


# --- what a step reports, for both engines ----------------------------------------------------------------------

def _offsets(offsets: Mapping[int, int]) -> dict[str, int]:
    return {str(p): int(o) for p, o in sorted(offsets.items())}


def raw_metadata(report: IngestReport, latest_end: Mapping[int, int], row_count: int, engine: str,
                 workers: int) -> dict[str, object]:
    """The raw asset's materialization metadata (`latest_end`: the topic's end offsets after the run, for the lag)."""
    return {
        "messages_consumed": report.consumed,
        "rows_landed": report.landed,
        "dead_lettered": report.dead_lettered,
        "batches": report.batches,
        "offsets_start": _offsets(report.start_offsets),
        "offsets_committed": _offsets(report.committed_offsets),
        "lag_messages": report.lag(dict(latest_end)),
        "delta_version": report.raw_version if report.raw_version is not None else -1,
        "dead_letter_version": report.dead_letter_version if report.dead_letter_version is not None else -1,
        "new_columns": dict(report.new_columns),
        "events_per_second": round(report.consumed / report.seconds, 1) if report.seconds else 0.0,
        "engine": engine,
        "ingest_workers": workers,
        "dagster/row_count": row_count,
    }


def _layout(uri: str) -> dict[str, object]:
    """Row count and the merge-on-read state a user watches: rows marked deleted wait for maintenance's purge."""
    from cardo_pipeline.curate.merge_on_read import file_summary
    from cardo_pipeline.ingest.delta_log import load_table

    table = load_table(uri)
    if table is None:
        return {"dagster/row_count": 0}
    summary = file_summary(table)
    return {"dagster/row_count": summary["live_rows"], "data_files": summary["data_files"],
            "rows_marked_deleted": summary["rows_marked_deleted"],
            "files_with_deletion_vectors": summary["files_with_deletion_vectors"]}


def curated_outcome(step: CuratedStep, report: ApplyReport, engine: str) -> StepOutcome:
    """Both curated tables' metadata after an apply, and the consistency check of the two."""
    common = {
        "engine": engine,
        "raw_version_applied": report.raw_version if report.raw_version is not None else -1,
        "events_applied": report.events,
        "batches": report.batches,
        "keys_touched": report.keys_touched,
        "truncates_seen": len(report.truncates),
        "events_per_second": round(report.events / report.seconds, 1) if report.seconds else 0.0,
    }
    current = {
        **common, **_layout(step.current),
        "delta_version": report.current_version if report.current_version is not None else -1,
        "rows_inserted": report.inserted, "rows_updated": report.updated, "rows_deleted": report.deleted,
    }
    history = {
        **common, **_layout(step.history),
        "delta_version": report.history_version if report.history_version is not None else -1,
        "history_rows_written": report.history_rows_written,
    }
    return StepOutcome({step.current_asset: current, step.history_asset: history},
                       [consistency_check(step)])


def consistency_check(step: CuratedStep) -> CheckOutcome:
    """The current table holds exactly the history's current, not deleted versions, each key once (read by polars,
    as `curate.consistency` does for every engine)."""
    from cardo_pipeline.curate.consistency import compare_current_with_history

    result = compare_current_with_history(TABLES_BY_NAME[step.table], step.locations)
    return CheckOutcome(step.current_asset, CONSISTENCY_CHECK, result.passed, {
        "rows_compared": result.compared, "only_in_current": result.only_in_current,
        "only_in_history": result.only_in_history, "differing": result.differing,
        "duplicate_keys": result.duplicate_keys,
        # dates and decimals of the sample rows as text: the samples travel as JSON
        "failure_samples": json.loads(json.dumps(result.samples, default=str)),
    })


# --- the Spark engine's steps ----------------------------------------------------------------------------------

def spark_identity(spark: SparkSession) -> dict[str, str]:
    """Which Spark ran a step: the master URL and the application's id (the standalone master's UI lists it)."""
    context = spark.sparkContext
    return {"spark_master": context.master, "spark_application_id": context.applicationId}


def run_raw_step(spark: SparkSession, step: RawStep, *, log: Log = lambda message: None) -> StepOutcome:
    from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
    from cardo_pipeline.kafka_topics import end_offsets
    from cardo_pipeline.spark.ingest import ingest_topic_with_spark

    table = TABLES_BY_NAME[step.table]
    report = ingest_topic_with_spark(spark, step.bootstrap, table, step.topic, step.raw_uri, step.dead_letter_uri,
                                     target_end=step.target_end, log=log)
    latest = end_offsets(step.bootstrap, [step.topic])[step.topic]
    rows = OffsetTrackedTable(step.raw_uri).row_count()
    return StepOutcome({step.asset: raw_metadata(report, latest, rows, "spark", 1)})


def run_curated_step(spark: SparkSession, step: CuratedStep, *, log: Log = lambda message: None) -> StepOutcome:
    from cardo_pipeline.spark.apply import apply_with_spark

    report = apply_with_spark(spark, TABLES_BY_NAME[step.table], step.locations, log=log)
    return curated_outcome(step, report, "spark")


def run_step(spark: SparkSession, step: Step, *, launch: str, log: Log = lambda message: None) -> StepOutcome:
    """Run `step` on `spark`; every materialization says how it was launched and on which Spark."""
    outcome = (run_raw_step(spark, step, log=log) if isinstance(step, RawStep)
               else run_curated_step(spark, step, log=log))
    return outcome.with_metadata({"launch": launch, **spark_identity(spark)})
