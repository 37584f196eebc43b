"""The feature tests' simulated book and the two engines that compute features from it: the local one (polars,
`cardo_pipeline.features`) and Spark (`cardo_pipeline.spark.features`, imported only when a Spark test runs)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from functools import cache
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from cardo_pipeline.features.loan_features import KnownHistories, cutoffs_known, loan_features
from cardo_pipeline.features.outcomes import default_outcomes
from cardo_pipeline.geo.postcodes import postcode_nuts3
from cardo_pipeline.simulator.history import simulated_histories

FLOAT_RELATIVE_TOLERANCE = 1e-9


@cache
def simulated_book() -> tuple[KnownHistories, pl.DataFrame, dict[str, pl.LazyFrame]]:
    """(the local engine's known histories, the true PDs, the histories) of a 500-loan, 16-month book."""
    simulated = simulated_histories(loans=500, months=16, seed=11)
    return KnownHistories.from_histories(simulated.histories), simulated.truth, simulated.histories


@cache
def postcode_table() -> pl.DataFrame:
    return postcode_nuts3().select("country_code", "postcode", "nuts3_code")


class LocalEngine:
    name = "local"

    def known(self, histories: dict[str, pl.LazyFrame]) -> KnownHistories:
        return KnownHistories.from_histories(histories)

    def book_known(self) -> KnownHistories:
        return simulated_book()[0]

    def features(self, known: KnownHistories, postcodes: pl.DataFrame, cutoffs: Iterable[date]) -> pl.DataFrame:
        return loan_features(known, postcodes, cutoffs)

    def outcomes(self, known: KnownHistories, cutoffs: Iterable[date]) -> pl.DataFrame:
        return default_outcomes(known, cutoffs)

    def assert_same(self, left: pl.DataFrame, right: pl.DataFrame) -> None:
        assert left.equals(right)


class SparkEngine:
    """The Spark engine fed the same histories (polars frames handed over through Arrow); its outputs come back as
    polars. The book's known histories and its features are computed once per session (`_book_cache`)."""

    name = "spark"
    _book_cache: dict[str, Any] = {}

    def __init__(self, spark) -> None:
        self.spark = spark

    def known(self, histories: dict[str, pl.LazyFrame]):
        from cardo_pipeline.spark.features import spark_frame, spark_known_histories

        return spark_known_histories(self.spark, {name: spark_frame(self.spark, frame.collect())
                                                  for name, frame in histories.items()})

    def book_known(self):
        if "known" not in self._book_cache:
            self._book_cache["known"] = self.known(simulated_book()[2])
        return self._book_cache["known"]

    def features(self, known, postcodes: pl.DataFrame, cutoffs: Iterable[date]) -> pl.DataFrame:
        from cardo_pipeline.spark.features import spark_loan_features, to_polars

        return to_polars(spark_loan_features(self.spark, known, postcodes, cutoffs))

    def outcomes(self, known, cutoffs: Iterable[date]) -> pl.DataFrame:
        from cardo_pipeline.spark.features import spark_default_outcomes, to_polars

        return to_polars(spark_default_outcomes(self.spark, known, cutoffs))

    def assert_same(self, left: pl.DataFrame, right: pl.DataFrame) -> None:
        # Spark sums floats in whatever order its partitions give
        assert_frames_match(left, right)


def assert_frames_match(left: pl.DataFrame, right: pl.DataFrame) -> None:
    """Same columns, types and rows in the same order; integers, strings and dates equal, floats within 1e-9
    relative (NaN and infinities equal)."""
    assert left.schema == right.schema
    assert_frame_equal(left, right, check_exact=False, rel_tol=FLOAT_RELATIVE_TOLERANCE, abs_tol=0.0)


def book_features(engine: LocalEngine | SparkEngine, cutoffs: list[date]) -> pl.DataFrame:
    """The book's features of `cutoffs` by `engine`. Spark's: every cutoff the book's clock has passed computed once
    per session, the ones asked for taken from them."""
    if engine.name == "local":
        return engine.features(engine.book_known(), postcode_table(), cutoffs)
    cached = SparkEngine._book_cache
    every = cutoffs_known(simulated_book()[0], date(2024, 1, 1))
    if not set(cutoffs) <= set(every):
        return engine.features(engine.book_known(), postcode_table(), cutoffs)
    if "features" not in cached:
        cached["features"] = engine.features(engine.book_known(), postcode_table(), every)
    return cached["features"].filter(pl.col("cutoff_date").is_in(sorted(set(cutoffs))))


def engine_for(request: pytest.FixtureRequest) -> LocalEngine | SparkEngine:
    if request.param == "local":
        return LocalEngine()
    return SparkEngine(request.getfixturevalue("spark"))
