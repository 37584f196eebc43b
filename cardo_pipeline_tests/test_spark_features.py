"""The loan features and default outcomes on Spark (`cardo_pipeline.spark.features`) equal the local engine's: the
source clock, every feature of every cutoff of a simulated book, the outcomes, and the same from the curated history
Delta tables (decimals and all). The engine-independent tests of `test_features.py` run on Spark too."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest

from cardo_pipeline.features.clock import LSN, OFFSET, source_clock, with_known_at
from cardo_pipeline.features.loan_features import HISTORY_COLUMNS, KnownHistories, cutoffs_known, loan_features
from cardo_pipeline.features.outcomes import OUTCOME_SCHEMA, default_outcomes
from cardo_pipeline.tables import TABLES_BY_NAME, lake_uri
from cardo_pipeline_tests.feature_helpers import (
    SparkEngine,
    assert_frames_match,
    book_features,
    postcode_table,
    simulated_book,
)

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def engine(spark) -> SparkEngine:
    return SparkEngine(spark)


def _versions(rows: list[tuple[int, int, str | None, bool]]) -> pl.DataFrame:
    """(key, lsn, updated_at or None, is_deleted) -> a history frame."""
    return pl.DataFrame(
        [(k, lsn, lsn, None if ts is None else datetime.fromisoformat(ts).replace(tzinfo=UTC), deleted)
         for k, lsn, ts, deleted in rows],
        schema={"id": pl.Int64, "valid_from_lsn": pl.Int64, "valid_from_offset": pl.Int64,
                "updated_at": pl.Datetime("us", "UTC"), "is_deleted": pl.Boolean}, orient="row")


def test_the_spark_clock_is_the_local_clock(spark, engine) -> None:
    """Backdated stamps, deletes (the next stamp; the previous one when none follows), an LSN whose stamps are all
    null: `known_at` as the local asof joins give it; and every version of the book's four histories."""
    from cardo_pipeline.spark.features import spark_frame, spark_with_known_at, to_polars

    a = _versions([(1, 10, "2024-01-05", False), (1, 30, "2024-01-02", False), (2, 40, "2024-01-03", True),
                   (3, 50, "2024-02-01", False), (3, 55, None, False), (3, 60, "2024-01-20", False),
                   (4, 90, None, True)])
    b = _versions([(9, 20, "2024-01-10", False), (9, 40, "2024-03-01", False)])
    clock = source_clock([a.lazy(), b.lazy()])
    on_spark = spark_with_known_at({"a": spark_frame(spark, a), "b": spark_frame(spark, b)})
    for name, frame in (("a", a), ("b", b)):
        local = with_known_at(frame.lazy(), clock).collect().sort(LSN)
        assert to_polars(on_spark[name]).sort(LSN).select(local.columns).equals(local), name

    known, _, _ = simulated_book()
    spark_known = engine.book_known()
    assert spark_known.known_through == known.known_through
    for name in HISTORY_COLUMNS:
        local = getattr(known, name).sort(LSN, OFFSET)
        assert to_polars(getattr(spark_known, name)).sort(LSN, OFFSET).select(local.columns).equals(local), name


def test_spark_features_equal_the_local_features(engine) -> None:
    """Every cutoff of the book: integers, strings and dates equal, floats within 1e-9 relative (Spark sums in
    another order and its `pow` is Java's)."""
    known, _, _ = simulated_book()
    cutoffs = cutoffs_known(known, date(2024, 1, 1))
    local = loan_features(known, postcode_table(), cutoffs)
    on_spark = book_features(engine, cutoffs)
    assert on_spark.height == local.height > 1000
    assert_frames_match(on_spark, local)
    # the features that can be null are null in the same rows
    for column in ("ltv_origination", "ltv_current", "paid_over_due_12m", "nuts2_code"):
        assert on_spark[column].is_null().equals(local[column].is_null()), column


def test_spark_outcomes_equal_the_local_outcomes(engine) -> None:
    known, _, _ = simulated_book()
    cutoffs = cutoffs_known(known, date(2024, 1, 1))
    local = default_outcomes(known, cutoffs)
    on_spark = engine.outcomes(engine.book_known(), cutoffs)
    assert on_spark.schema == OUTCOME_SCHEMA and on_spark.height == local.height > 100
    assert on_spark.equals(local)
    assert engine.outcomes(engine.book_known(), [date(2025, 3, 31)]).schema == OUTCOME_SCHEMA  # none has 12 months


def _curated_histories(lake) -> dict[str, str]:
    """The simulated book's histories as curated Delta tables in a lake's layout (numerics as decimals)."""
    _, _, histories = simulated_book()
    uris = {}
    for name, frame in histories.items():
        decimals = {c.name: pl.Decimal(*map(int, c.pg_type.removeprefix("numeric(").rstrip(")").split(",")))
                    for c in TABLES_BY_NAME[name].columns if c.pg_type.startswith("numeric")}
        uris[name] = lake_uri(str(lake), TABLES_BY_NAME[name].layout.history)
        frame.with_columns(pl.col(c).round(dtype.scale).cast(dtype) for c, dtype in decimals.items()
                           ).collect().write_delta(uris[name])
    return uris


def test_the_feature_assets_run_on_the_engine_configured_and_agree(spark, tmp_path) -> None:
    """The Dagster assets, one run per engine on copies of the same lake: the engine each used is in its metadata,
    and the tables they wrote are the same."""
    import shutil

    import dagster as dg

    from cardo_pipeline.defs.features.loans import LOAN_FEATURES, LOAN_OUTCOMES, build_loan_feature_defs
    from cardo_pipeline.defs.keys import reference_key
    from cardo_pipeline.defs.reference.assets import POSTCODES
    from cardo_pipeline.defs.resources import EngineResource, LakeResource

    _curated_histories(tmp_path / "local")
    postcode_table().write_delta(lake_uri(str(tmp_path / "local"), reference_key(POSTCODES).path))
    shutil.copytree(tmp_path / "local", tmp_path / "spark")
    defs = build_loan_feature_defs(dg.MonthlyPartitionsDefinition(start_date="2024-01-01", end_offset=0))
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    tables = {}
    with dg.DagsterInstance.ephemeral() as instance:
        for engine in ("local", "spark"):
            resources = {"lake": LakeResource(root=str(tmp_path / engine)), "engine": EngineResource(default=engine)}
            for selection, partition in ((LOAN_FEATURES, "2024-06-01"), (LOAN_OUTCOMES, None)):
                result = dg.materialize(assets, selection=[selection], partition_key=partition, resources=resources,
                                        instance=instance)
                assert result.success
                [materialization] = result.asset_materializations_for_node(result.all_node_events[0].node_name)
                assert materialization.metadata["engine"].value == engine
            tables[engine] = [pl.read_delta(lake_uri(str(tmp_path / engine), key.path)).sort(pl.all())
                              for key in (LOAN_FEATURES, LOAN_OUTCOMES)]
    assert tables["local"][0].height > 100
    assert_frames_match(tables["spark"][0], tables["local"][0])
    assert tables["spark"][1].equals(tables["local"][1])


def test_spark_reads_the_curated_history_tables(spark, tmp_path) -> None:
    """From the curated Delta tables (numerics as decimals, as curated writes them): Spark's features and outcomes
    equal the local asset's path (polars `scan_delta`, `KnownHistories.from_histories`)."""
    from cardo_pipeline.spark.features import (
        default_outcomes_with_spark,
        loan_features_with_spark,
        spark_known_histories_from_delta,
    )

    uris = _curated_histories(tmp_path)
    local_known = KnownHistories.from_histories({name: pl.scan_delta(uri) for name, uri in uris.items()})
    cutoffs = [date(2024, 2, 29), date(2024, 12, 31)]
    known = spark_known_histories_from_delta(spark, uris)
    features = loan_features_with_spark(spark, known, postcode_table(), cutoffs)
    assert features.height > 100
    assert_frames_match(features, loan_features(local_known, postcode_table(), cutoffs))
    outcomes = default_outcomes_with_spark(spark, known, cutoffs)
    assert outcomes.height > 50 and outcomes.equals(default_outcomes(local_known, cutoffs))
    known.unpersist()
    assert not loan_features_with_spark(spark, known, postcode_table(), []).height
