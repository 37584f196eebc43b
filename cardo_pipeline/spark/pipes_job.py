"""The Spark job of launch `pipes`: run by `spark-submit` (a subprocess on this machine, a pod on Kubernetes) under
a Dagster Pipes session, it runs one raw or curated step (`pipes_steps`) for the table in its Pipes extras and
reports back through Pipes what the in-process path reports: each asset's materialization metadata (plus
`launch`, `spark_master`, `spark_application_id`) and, for a curated apply, the consistency check.

The SparkSession is the one spark-submit configured (`--master`, `--conf`: the jars, the Delta and Iceberg
extensions, ...; `spark.pipes` builds the command); nothing here chooses a setting.

    spark-submit --master spark://127.0.0.1:27077 --conf ... cardo_pipeline/spark/pipes_job.py
"""

import sys
from pathlib import Path

# Python puts a script's folder first on sys.path: this package's modules (ingest, apply, session, ...) must not
# shadow top-level modules of the same names.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _here]

from dagster_pipes import PipesContext, open_dagster_pipes  # noqa: E402

from cardo_pipeline.spark.pipes_steps import StepOutcome, run_step, step_from_extras  # noqa: E402


def _metadata(values: dict[str, object]) -> dict[str, object]:
    """Pipes metadata: a dict or a list must say it is JSON (Pipes takes a bare dict for a typed value)."""
    return {name: {"raw_value": value, "type": "json"} if isinstance(value, dict | list) else value
            for name, value in values.items()}


def report(pipes: PipesContext, outcome: StepOutcome) -> None:
    for asset, metadata in outcome.materializations.items():
        pipes.report_asset_materialization(metadata=_metadata(metadata), asset_key=asset)
    for check in outcome.checks:
        pipes.report_asset_check(check.name, check.passed, severity="ERROR", metadata=_metadata(check.metadata),
                                 asset_key=check.asset)


def main() -> None:
    with open_dagster_pipes() as pipes:
        step = step_from_extras(pipes.extras)
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.getOrCreate()
        try:
            context = spark.sparkContext
            pipes.log.info(f"{step.step} step of {step.table} on {context.master} ({context.applicationId})")
            outcome = run_step(spark, step, launch="pipes", log=pipes.log.info)
            report(pipes, outcome)
        finally:
            spark.stop()


if __name__ == "__main__":
    main()
