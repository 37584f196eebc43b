"""`features/loan_features` and `features/loan_snapshots` (one partition per monthly cutoff) and
`features/loan_default_outcomes` (the PD model's target): glue around `cardo_pipeline.features`. A month's features
partition holds the loans active at the month's last day, as known then, its snapshots partition also the loans
closed or originated in the month; its outcome becomes known 12 months later, so outcomes are one table rebuilt
whole."""


from contextlib import contextmanager
from datetime import date

import dagster as dg
import polars as pl

from cardo_pipeline.defs.groups import FEATURES
from cardo_pipeline.defs.keys import curated_history_key, features_key, reference_key
from cardo_pipeline.defs.quality.pandera_checks import markdown_table, pandera_asset_check
from cardo_pipeline.defs.reference.assets import POSTCODES
from cardo_pipeline.defs.resources import EngineResource, LakeResource
from cardo_pipeline.features.loan_features import (
    FEATURE_COLUMNS,
    HISTORY_COLUMNS,
    KnownHistories,
    cutoffs_between,
    cutoffs_known,
    loan_features,
    month_end,
)
from cardo_pipeline.features.loan_snapshots import loan_snapshots
from cardo_pipeline.features.models import loan_default_outcomes_model, loan_features_model, loan_snapshots_model
from cardo_pipeline.features.outcomes import default_outcomes
from cardo_pipeline.quality.validate import delta_source
from cardo_pipeline.tables import TABLES_BY_NAME

LOAN_FEATURES = features_key("loan_features")
LOAN_OUTCOMES = features_key("loan_default_outcomes")
LOAN_SNAPSHOTS = features_key("loan_snapshots")
HISTORIES = [curated_history_key(TABLES_BY_NAME[name]) for name in HISTORY_COLUMNS]


DEFAULT_FEATURES_START = "2024-01-01"  # the simulator's first month


def cutoff_partitions() -> dg.MonthlyPartitionsDefinition:
    """One partition per month from CARDO_FEATURES_START (a month's first day), each as of the month's last day;
    the newest is the last whole month."""
    import os

    from cardo_pipeline.settings import ConfigError

    raw = os.environ.get("CARDO_FEATURES_START") or DEFAULT_FEATURES_START
    try:
        first = date.fromisoformat(raw)
    except ValueError:
        first = None
    if first is None or first.day != 1:
        raise ConfigError(f"CARDO_FEATURES_START must be the first day of a month (YYYY-MM-01), got {raw!r}")
    return dg.MonthlyPartitionsDefinition(start_date=first.isoformat(), end_offset=0)


def cutoff_of(partition_key: str) -> date:
    """A monthly partition (keyed by the month's first day) is as of the month's last day."""
    first = date.fromisoformat(partition_key)
    return month_end(first.year, first.month)


def partition_of(cutoff: date) -> str:
    return cutoff.replace(day=1).isoformat()


def history_uris(lake: LakeResource) -> dict[str, str]:
    """The curated histories the features read, by table; a missing one fails the run saying what to do."""
    from cardo_pipeline.ingest.delta_log import load_table

    uris = {name: lake.table(TABLES_BY_NAME[name].layout.history) for name in HISTORY_COLUMNS}
    for name, uri in uris.items():
        if load_table(uri) is None:
            raise dg.Failure(f"curated/{name}_history does not exist yet ({uri}): materialize the curated group "
                             "first")
    return uris


def read_known_histories(lake: LakeResource) -> KnownHistories:
    return KnownHistories.from_histories({name: pl.scan_delta(uri) for name, uri in history_uris(lake).items()})


@contextmanager
def known_histories_on(engine: str, lake: LakeResource, engines: EngineResource):
    """The histories as known, read by the asset's engine (the local `KnownHistories` or Spark's, whose cached
    frames are released on the way out: the session outlives the run)."""
    if engine != "spark":
        yield read_known_histories(lake)
        return
    from cardo_pipeline.spark.features import spark_known_histories_from_delta

    known = spark_known_histories_from_delta(engines.spark(), history_uris(lake))
    try:
        yield known
    finally:
        known.unpersist()


def write_cutoffs(frame: pl.DataFrame, uri: str, cutoffs: list[date]) -> int:
    """Replace the given cutoffs' rows (and only those) in one commit; the table is partitioned by cutoff."""
    from deltalake import DeltaTable

    from cardo_pipeline.ingest.delta_log import load_table

    if load_table(uri) is None:
        frame.write_delta(uri, mode="append", delta_write_options={"partition_by": ["cutoff_date"]})
    else:
        listed = ", ".join(f"'{c.isoformat()}'" for c in cutoffs)
        frame.write_delta(uri, mode="overwrite", delta_write_options={
            "partition_by": ["cutoff_date"], "predicate": f"cutoff_date IN ({listed})"})
    return DeltaTable(uri).version()


def require_known(known: KnownHistories, cutoffs: list[date], start: date, table: str) -> None:
    """Fail the run when a cutoff asked for is past what the servicing data shows (nothing is known of it yet)."""
    passed = cutoffs_known(known, start)
    late = [c for c in cutoffs if c not in passed]
    if late:
        raise dg.Failure(
            f"{len(late)} cutoff(s) from {late[0]} are past what the servicing data shows (its clock reads "
            f"{known.known_through}): their {table} cannot be known yet. Materialize cutoffs up to "
            f"{passed[-1] if passed else None}.")


def read_postcodes(lake: LakeResource) -> pl.DataFrame:
    return pl.read_delta(lake.table(reference_key(POSTCODES).path), columns=["country_code", "postcode", "nuts3_code"])


def status_counts(frame: pl.DataFrame) -> str:
    """A markdown table of the rows per status (columns) per cutoff (rows)."""
    if not frame.height:
        return "none"
    counts = frame.group_by("cutoff_date", "status").len()
    statuses = sorted(counts["status"].unique())
    per_cutoff = counts.pivot("status", index="cutoff_date", values="len").sort("cutoff_date").fill_null(0)
    return markdown_table([{"cutoff": row["cutoff_date"], **{s: row[s] for s in statuses}}
                           for row in per_cutoff.iter_rows(named=True)])


def build_loan_feature_defs(cutoffs_def: dg.MonthlyPartitionsDefinition) -> dg.Definitions:
    start = cutoff_of(cutoffs_def.get_first_partition_key())

    @dg.asset(
        key=LOAN_FEATURES, group_name=FEATURES, kinds={"delta", "polars"}, partitions_def=cutoffs_def,
        # A backfill of many months is one run reading the histories once, not one run per month.
        backfill_policy=dg.BackfillPolicy.single_run(), deps=[*HISTORIES, reference_key(POSTCODES)],
        tags={"cardo/layer": "features"},
        description="One row per loan active at the month's last day (the cutoff), from the curated SCD2 histories "
                    "as known at the cutoff by the source's clock: debt-to-income, LTV at origination and current "
                    "(latest appraisal on or before the cutoff), days past due and missed payments over 3/6/12 "
                    "months, paid over due, utilisation, seasoning, remaining term, rate, product, collateral, "
                    "employment, income, age band, NUTS2 region and its trailing 12-month default rate. No "
                    "personal data.",
    )
    def loan_features_asset(context: dg.AssetExecutionContext, lake: LakeResource,
                            engine: EngineResource) -> dg.MaterializeResult:
        cutoffs = sorted(cutoff_of(key) for key in context.partition_keys)
        chosen = engine.for_asset(context.asset_key)
        with known_histories_on(chosen, lake, engine) as known:
            through = known.known_through
            require_known(known, cutoffs, start, "features")
            postcodes = read_postcodes(lake)
            if chosen == "spark":
                from cardo_pipeline.spark.features import loan_features_with_spark

                frame = loan_features_with_spark(engine.spark(), known, postcodes, cutoffs)
            else:
                frame = loan_features(known, postcodes, cutoffs)
        version = write_cutoffs(frame, lake.table(LOAN_FEATURES.path), cutoffs)
        per_cutoff = frame.group_by("cutoff_date").len().sort("cutoff_date")
        nulls = {c: round(frame[c].null_count() / frame.height, 4) for c in FEATURE_COLUMNS
                 if frame.height and frame[c].null_count()}
        return dg.MaterializeResult(metadata={
            "dagster/row_count": frame.height, "delta_version": version, "engine": chosen,
            "cutoffs": f"{cutoffs[0]}..{cutoffs[-1]} ({len(cutoffs)})",
            "source_clock": str(through),
            "rows_per_cutoff": dg.MetadataValue.json({str(k): v for k, v in per_cutoff.iter_rows()}),
            "null_share": dg.MetadataValue.json(nulls),
            "features": dg.MetadataValue.md(markdown_table(frame.head(5).to_dicts()) if frame.height else "none"),
        })

    @dg.asset(
        key=LOAN_SNAPSHOTS, group_name=FEATURES, kinds={"delta", "polars"}, partitions_def=cutoffs_def,
        backfill_policy=dg.BackfillPolicy.single_run(), deps=[*HISTORIES, reference_key(POSTCODES)],
        tags={"cardo/layer": "features"},
        description="The loan tape's base: one row per loan and month-end cutoff, from the curated SCD2 histories "
                    "as known at the cutoff by the source's clock. A row is the loan's terms, seasoning, "
                    "outstanding principal, status and days past due at the cutoff, its status and outstanding "
                    "principal at the previous cutoff, and its borrower's country and NUTS3 region. The loans on "
                    "it are those active at the cutoff, the defaulted ones not yet written off (the non-performing "
                    "stock), and those closed (repaid, defaulted, written off) or originated during the cutoff's "
                    "month: a month's default rate and prepayment rate count the loans that left the book in it, "
                    "which the active loans alone cannot show. A loan repaid or written off before the previous "
                    "cutoff is not on it. Computed locally (polars).",
    )
    def loan_snapshots_asset(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        cutoffs = sorted(cutoff_of(key) for key in context.partition_keys)
        known = read_known_histories(lake)
        through = known.known_through
        require_known(known, cutoffs, start, "snapshots")
        frame = loan_snapshots(known, read_postcodes(lake), cutoffs)
        version = write_cutoffs(frame, lake.table(LOAN_SNAPSHOTS.path), cutoffs)
        per_cutoff = frame.group_by("cutoff_date").len().sort("cutoff_date")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": frame.height, "delta_version": version, "engine": "local",
            "cutoffs": f"{cutoffs[0]}..{cutoffs[-1]} ({len(cutoffs)})",
            "source_clock": str(through),
            "rows_per_cutoff": dg.MetadataValue.json({str(k): v for k, v in per_cutoff.iter_rows()}),
            "status_per_cutoff": dg.MetadataValue.md(status_counts(frame)),
            "unmatched_region_share": round(frame["nuts3_code"].null_count() / frame.height, 4) if frame.height
            else 0.0,
        })

    @dg.asset(
        key=LOAN_OUTCOMES, group_name=FEATURES, kinds={"delta", "polars"}, deps=HISTORIES,
        tags={"cardo/layer": "features"},
        description="The PD model's target: for each month-end cutoff whose 12 months have passed, each loan active "
                    "at it and whether it defaulted (status defaulted or written off) within those 12 months. "
                    "Rebuilt whole: a cutoff's outcome becomes known a year after its features.",
    )
    def loan_default_outcomes_asset(context: dg.AssetExecutionContext, lake: LakeResource,
                                    engine: EngineResource) -> dg.MaterializeResult:
        chosen = engine.for_asset(context.asset_key)
        with known_histories_on(chosen, lake, engine) as known:
            through = known.known_through
            cutoffs = cutoffs_between(start, through.date()) if through else []
            if chosen == "spark":
                from cardo_pipeline.spark.features import default_outcomes_with_spark

                frame = default_outcomes_with_spark(engine.spark(), known, cutoffs)
            else:
                frame = default_outcomes(known, cutoffs)
        from cardo_pipeline.defs.reference.assets import write_table

        version = write_table(frame, lake.table(LOAN_OUTCOMES.path))
        rates = frame.group_by("cutoff_date").agg(pl.len().alias("loans"), pl.col("default_12m").sum()
                                                  .alias("defaults")).sort("cutoff_date")
        rates = rates.with_columns((pl.col("defaults") / pl.col("loans")).round(4).alias("default_rate"))
        return dg.MaterializeResult(metadata={
            "dagster/row_count": frame.height, "delta_version": version, "source_clock": str(through),
            "engine": chosen,
            "cutoffs_with_outcome": rates.height,
            "default_rate": round(float(frame["default_12m"].mean()), 4) if frame.height else 0.0,
            "default_rate_per_cutoff": dg.MetadataValue.md(markdown_table(rates.to_dicts()) if rates.height
                                                           else "no cutoff has 12 months of outcome yet"),
        })

    checks = [
        pandera_asset_check(key, model, lambda context, key=key: delta_source(context.resources.lake.table(key.path)),
                            name="pandera_schema", required_resource_keys={"lake"})
        for key, model in ((LOAN_FEATURES, loan_features_model()), (LOAN_SNAPSHOTS, loan_snapshots_model()),
                           (LOAN_OUTCOMES, loan_default_outcomes_model()))
    ]
    return dg.Definitions(assets=[loan_features_asset, loan_snapshots_asset, loan_default_outcomes_asset],
                          asset_checks=checks)


def known_cutoff_partitions(lake: LakeResource, cutoffs_def: dg.MonthlyPartitionsDefinition) -> list[str]:
    """The partitions whose cutoff the servicing data has passed (what `make demo` materializes)."""
    start = cutoff_of(cutoffs_def.get_first_partition_key())
    return [partition_of(c) for c in cutoffs_known(read_known_histories(lake), start)]
