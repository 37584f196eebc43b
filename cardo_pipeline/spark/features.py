"""`features/loan_features` and `features/loan_default_outcomes` on Spark: the computation of
`cardo_pipeline.features` (the source clock, `as_of`, one block per feature) in pyspark DataFrames, producing the
same rows, columns and types as the local (polars) functions.

Every cutoff is computed at once: the versions are joined to a small table of cutoffs (one row per cutoff with its
end instant and window starts, computed on the driver with the local month arithmetic), and every `as_of` and
window becomes a window function or aggregate partitioned by cutoff.

Where the two engines' semantics differ, this module follows polars':
- the source clock's asof joins (backward for upserts, forward for deletes) are `last` / `first` over an LSN-ordered
  window of the clock's rows, not joins;
- `unique(keep="last")` after a sort is `row_number` over the key ordered by (LSN, offset) descending;
- a sum of nothing but nulls is 0 in polars, null in Spark: sums are coalesced where polars would give 0;
- float division by zero is +-inf or NaN in polars, an error in Spark's ANSI mode: `_fdiv` spells out IEEE;
- polars' `//` floors, Spark's integer division truncates; `clip` keeps nulls where `greatest` would not;
- `sort_by(value, descending=True).first()` puts nulls first (polars' default), ties by the collateral's key;
- a timestamp's UTC date is computed from its microseconds, whatever the session's time zone.
Postcodes are normalised in Python (`normalise_postcode`) on the driver, over the distinct (country, postcode) pairs
of the borrowers' history: a small table joined back in Spark.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from functools import reduce

import polars as pl
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cardo_pipeline.features.clock import DELETED, KNOWN_AT, LSN, OFFSET, STAMP, cutoff_end
from cardo_pipeline.features.loan_features import (
    AGE_BANDS,
    DEFAULTED,
    FEATURE_COLUMNS,
    HISTORY_COLUMNS,
    NOT_PAID_ON_TIME,
    REGION_PRIOR_LOANS,
    VERSION,
    WINDOWS_MONTHS,
    feature_schema,
    months_before,
)
from cardo_pipeline.features.outcomes import OUTCOME_SCHEMA, outcome_window_end
from cardo_pipeline.geo.postcodes import normalise_postcode

NEXT_KNOWN_AT = "_next_known_at"
CUTOFF = "cutoff_date"
_END = "_end"
_POLARS_TO_SPARK = {pl.Int64(): T.LongType(), pl.Int32(): T.IntegerType(), pl.Int8(): T.ByteType(),
                    pl.Float64(): T.DoubleType(), pl.String(): T.StringType(), pl.Date(): T.DateType()}
_MICROS_PER_DAY = 86_400_000_000


def spark_schema(schema: pl.Schema) -> T.StructType:
    """The Spark types of a polars schema (the types the local functions' tables have)."""
    return T.StructType([T.StructField(name, _POLARS_TO_SPARK[dtype]) for name, dtype in schema.items()])


def spark_frame(spark: SparkSession, frame: pl.DataFrame) -> DataFrame:
    """A polars frame in Spark (through Arrow; strings as plain large strings, which Spark's Arrow reader takes)."""
    return spark.createDataFrame(frame.to_arrow(compat_level=pl.CompatLevel.oldest()))


def to_polars(frame: DataFrame, schema: pl.Schema | None = None) -> pl.DataFrame:
    """A Spark frame in polars (through Arrow), cast to `schema` when given (a no-op when the types match)."""
    out = pl.from_arrow(frame.toArrow())
    assert isinstance(out, pl.DataFrame)
    return out.cast(dict(schema)) if schema is not None else out


# --- the source clock -------------------------------------------------------------------------------------------


def _narrowed(frame: DataFrame, name: str) -> DataFrame:
    """The columns the features read, decimals as doubles (as `KnownHistories.from_histories` does), the stamp as a
    UTC instant."""
    columns = [*HISTORY_COLUMNS[name], *VERSION]
    types = dict(frame.select(*columns).dtypes)
    out = []
    for column in columns:
        if column == STAMP:
            out.append(F.col(column).cast(T.TimestampType()).alias(column))
        elif types[column].startswith("decimal"):
            out.append(F.col(column).cast(T.DoubleType()).alias(column))
        else:
            out.append(F.col(column))
    return frame.select(*out)


def _clock_lookup(narrowed: Iterable[DataFrame]) -> DataFrame:
    """(LSN, _backward, _forward) for every LSN of any version: the clock at or before it and at or after it.

    The clock (`clock.source_clock`) has a row per LSN with a stamped version: the running maximum of the stamps in
    LSN order, null where the LSN's stamps are all null (as polars' `cum_max` leaves them). polars' asof joins pick
    the nearest clock row, whatever its value: here `last`/`first` of a struct that is null only off the clock."""
    events = reduce(DataFrame.unionByName, [f.select(LSN, DELETED, STAMP) for f in narrowed])
    stamped = ~F.col(DELETED)
    per_lsn = events.groupBy(LSN).agg(F.max(F.when(stamped, F.lit(True))).alias("_on_clock"),
                                      F.max(F.when(stamped, F.col(STAMP))).alias("_stamp"))
    ordered = Window.orderBy(LSN)  # one partition: a row per LSN, a few columns
    running = F.max(F.when(F.col("_on_clock"), F.col("_stamp"))).over(
        ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow))
    clock = per_lsn.withColumn("_clock", F.when(F.col("_on_clock"), F.struct(
        F.when(F.col("_stamp").isNotNull(), running).alias("t"))))
    return clock.select(
        LSN,
        F.last("_clock", ignorenulls=True).over(ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow))
        .getField("t").alias("_backward"),
        # the next clock row as the last one in descending order: a frame up to the current row is computed in one
        # pass, one up to the end is recomputed for every row (quadratic)
        F.last("_clock", ignorenulls=True).over(Window.orderBy(F.col(LSN).desc()).rowsBetween(
            Window.unboundedPreceding, Window.currentRow)).getField("t").alias("_forward"),
    )


def _with_known_at(versions: DataFrame, lookup: DataFrame) -> DataFrame:
    joined = versions.join(lookup, on=LSN, how="left")
    known_at = F.when(F.col(DELETED), F.coalesce("_forward", "_backward")).otherwise(F.col("_backward"))
    return joined.withColumn(KNOWN_AT, known_at).drop("_backward", "_forward")


def spark_with_known_at(versions: dict[str, DataFrame]) -> dict[str, DataFrame]:
    """`clock.source_clock` and `clock.with_known_at` together: each frame (with `valid_from_lsn`, `is_deleted` and
    `updated_at` as a timestamp) with its versions' `known_at`, the clock run over all of them."""
    return _all_with_known_at(versions, _clock_lookup(versions.values()))


def _all_with_known_at(versions: dict[str, DataFrame], lookup: DataFrame) -> dict[str, DataFrame]:
    return {name: _with_known_at(frame, lookup) for name, frame in versions.items()}


@dataclass(frozen=True)
class SparkKnownHistories:
    """`KnownHistories` on Spark: the four narrowed histories with `known_at` (loans with `_next_known_at`), cached."""

    loans: DataFrame
    borrowers: DataFrame
    collaterals: DataFrame
    payments: DataFrame

    @property
    def known_through(self) -> datetime | None:
        """The source clock's latest reading (a UTC instant), None for empty histories."""
        frames = (self.loans, self.borrowers, self.collaterals, self.payments)
        maxima = reduce(DataFrame.unionByName, [f.agg(F.max(KNOWN_AT).alias(KNOWN_AT)) for f in frames])
        polars = to_polars(maxima.select(F.unix_micros(F.col(KNOWN_AT)).alias("us")))
        micros = polars["us"].max()
        return None if micros is None else pl.Series([micros]).cast(pl.Datetime("us", "UTC")).item()

    def unpersist(self) -> None:
        for frame in (self.loans, self.borrowers, self.collaterals, self.payments):
            frame.unpersist()


def spark_known_histories(spark: SparkSession, histories: dict[str, DataFrame]) -> SparkKnownHistories:
    """The histories (curated SCD2 frames: the features' columns and the version columns) with the source clock's
    `known_at` per version, and each loan version's `_next_known_at`."""
    narrowed = {name: _narrowed(histories[name], name) for name in HISTORY_COLUMNS}
    lookup = _clock_lookup(narrowed.values()).cache()  # read by the four tables' joins below
    known = _all_with_known_at(narrowed, lookup)
    successor = Window.partitionBy("loan_id").orderBy(LSN, OFFSET)
    known["loans"] = known["loans"].withColumn(NEXT_KNOWN_AT, F.lead(KNOWN_AT).over(successor))
    known = {name: frame.cache() for name, frame in known.items()}
    for frame in known.values():
        frame.count()
    lookup.unpersist()
    return SparkKnownHistories(**known)


# --- helpers ----------------------------------------------------------------------------------------------------


def _fdiv(numerator: Column, denominator: Column) -> Column:
    """polars' float division: x/0 is +-inf, 0/0 and NaN/0 are NaN, null stays null (Spark's ANSI mode raises; the
    sign of a zero divisor is taken as positive)."""
    n, d = numerator.cast(T.DoubleType()), denominator.cast(T.DoubleType())
    nan, inf = F.lit(float("nan")), F.lit(float("inf"))
    return (F.when(n.isNull() | d.isNull(), F.lit(None).cast(T.DoubleType()))
            .when(d != 0, n / d)
            .when(F.isnan(n) | (n == 0), nan)
            .when(n > 0, inf)
            .otherwise(-inf))


def _months_between(start: Column) -> Column:
    """`loan_features._months_between` against each row's cutoff (`_cy`, `_cm`, `_cd`)."""
    whole = (F.col("_cy") * 12 + F.col("_cm")) - (F.year(start) * 12 + F.month(start))
    return whole - (F.dayofmonth(start) > F.col("_cd")).cast(T.IntegerType())


def _age_band(birth_date: Column) -> Column:
    age = F.floor(_months_between(birth_date) / F.lit(12))  # polars' // floors; Spark's `div` truncates
    band = F.when(birth_date.isNull(), F.lit("n/a"))
    for upper, label in AGE_BANDS:
        band = band.when(age <= upper, F.lit(label))
    return band.otherwise(F.lit("66+"))


def _utc_date(instant: Column) -> Column:
    """The UTC date of a timestamp, whatever the session's time zone (floor: instants before 1970 too)."""
    days = F.floor(F.unix_micros(instant) / F.lit(_MICROS_PER_DAY)).cast(T.IntegerType())
    return F.date_add(F.lit(date(1970, 1, 1)), days)


def _cutoffs(spark: SparkSession, cutoffs: list[date]) -> DataFrame:
    """One row per cutoff: its end instant, its year/month/day, the windows' first instants (`_start_{m}`) and the
    due dates the windows start after (`_due_after_{m}`), from the local month arithmetic."""
    utc = pa.timestamp("us", tz="UTC")
    columns: dict[str, pa.Array] = {
        CUTOFF: pa.array(cutoffs, pa.date32()),
        _END: pa.array([cutoff_end(c) for c in cutoffs], utc),
        "_cy": pa.array([c.year for c in cutoffs], pa.int32()),
        "_cm": pa.array([c.month for c in cutoffs], pa.int32()),
        "_cd": pa.array([c.day for c in cutoffs], pa.int32()),
    }
    for m in WINDOWS_MONTHS:
        columns[f"_start_{m}"] = pa.array([cutoff_end(months_before(c, m)) for c in cutoffs], utc)
        columns[f"_due_after_{m}"] = pa.array([months_before(c, m) for c in cutoffs], pa.date32())
    return spark.createDataFrame(pa.table(columns))


def _known_by(versions: DataFrame, cutoffs: DataFrame, *extra: str) -> DataFrame:
    """Each cutoff's versions known before its end: (versions x cutoffs) with `cutoff_date`, `_end` and `extra`."""
    small = F.broadcast(cutoffs.select(CUTOFF, _END, *extra))
    return versions.join(small, F.col(KNOWN_AT) < F.col(_END))


def _last_per_key(known: DataFrame, keys: list[str]) -> DataFrame:
    """`clock.as_of` per cutoff: each key's last version (by LSN, offset) among those known, deleted ones dropped."""
    latest = Window.partitionBy(CUTOFF, *keys).orderBy(F.col(LSN).desc(), F.col(OFFSET).desc())
    return (known.withColumn("_rank", F.row_number().over(latest)).filter(F.col("_rank") == 1).drop("_rank")
            .filter(~F.col(DELETED)))


def _as_of(versions: DataFrame, key: str, cutoffs: DataFrame) -> DataFrame:
    return _last_per_key(_known_by(versions, cutoffs), [key]).drop(_END)


def _postcode_nuts2(spark: SparkSession, borrowers: DataFrame, postcodes: pl.DataFrame) -> DataFrame:
    """(country_code, postcode as written, nuts2_code) for every pair in the borrowers' history: normalised in
    Python on the driver, joined to the postcodes there (a left join: duplicates of TERCET would multiply, as in
    the local engine)."""
    pairs = to_polars(borrowers.select("country_code", "postcode").where(F.col("postcode").isNotNull()).distinct(),
                      pl.Schema({"country_code": pl.String(), "postcode": pl.String()}))
    normalised = pairs.with_columns(pl.struct("country_code", "postcode").map_elements(
        lambda r: normalise_postcode(r["country_code"], r["postcode"]), return_dtype=pl.String).alias("_normalised"))
    joined = normalised.join(
        postcodes.select("country_code", pl.col("postcode").alias("_normalised"), "nuts3_code"),
        on=["country_code", "_normalised"], how="left")
    mapping = joined.select("country_code", "postcode", pl.col("nuts3_code").str.slice(0, 4).alias("nuts2_code"))
    if mapping.height == 0:
        return spark.createDataFrame([], "country_code string, postcode string, nuts2_code string")
    return spark_frame(spark, mapping)


# --- the feature blocks (each per cutoff) -----------------------------------------------------------------------


def _regions(borrowers_at: DataFrame, mapping: DataFrame) -> DataFrame:
    """(cutoff_date, borrower_id, nuts2_code) from the postcode each borrower had at the cutoff."""
    return (borrowers_at.select(CUTOFF, "borrower_id", "country_code", "postcode")
            .join(F.broadcast(mapping), on=["country_code", "postcode"], how="left")
            .select(CUTOFF, "borrower_id", "nuts2_code"))


def _seen_in_window(loans: DataFrame, cutoffs: DataFrame) -> DataFrame:
    """Loan versions known before each cutoff's end that were current at some time in its widest window."""
    widest = max(WINDOWS_MONTHS)
    known = _known_by(loans, cutoffs, *(f"_start_{m}" for m in WINDOWS_MONTHS))
    return known.filter(F.col(NEXT_KNOWN_AT).isNull() | (F.col(NEXT_KNOWN_AT) > F.col(f"_start_{widest}")))


def _max_dpd(seen: DataFrame) -> DataFrame:
    """Per (cutoff, loan): the largest days past due of the versions current in each window."""
    return seen.groupBy(CUTOFF, "loan_id").agg(*(
        F.max(F.when(F.col(NEXT_KNOWN_AT).isNull() | (F.col(NEXT_KNOWN_AT) > F.col(f"_start_{m}")),
                     F.col("days_past_due"))).alias(f"max_dpd_{m}m") for m in WINDOWS_MONTHS))


def _region_default_rates(seen: DataFrame, regions: DataFrame) -> DataFrame:
    """`loan_features._region_default_rates` per cutoff (the region window is the widest, 12 months)."""
    start = F.col(f"_start_{max(WINDOWS_MONTHS)}")
    exposed = seen.filter(F.col("status") == "active").select(CUTOFF, "loan_id", "borrower_id").distinct()
    defaulted = (seen.filter(F.col("status").isin(*DEFAULTED) & (F.col(KNOWN_AT) >= start))
                 .select(CUTOFF, "loan_id").distinct().withColumn("defaulted", F.lit(1)))
    per_loan = (exposed.join(defaulted, on=[CUTOFF, "loan_id"], how="left")
                .join(regions, on=[CUTOFF, "borrower_id"], how="left"))
    # polars: the sum of no defaults is 0, Spark's is null
    book = per_loan.groupBy(CUTOFF).agg(
        (F.coalesce(F.sum("defaulted"), F.lit(0)).cast(T.DoubleType()) / F.count(F.lit(1)).cast(T.DoubleType()))
        .alias("_book_rate"))
    per_region = per_loan.groupBy(CUTOFF, "nuts2_code").agg(
        F.count(F.lit(1)).alias("nuts2_loans_12m"), F.coalesce(F.sum("defaulted"), F.lit(0)).alias("_defaults"))
    prior = F.lit(REGION_PRIOR_LOANS)
    rate = ((F.col("_defaults").cast(T.DoubleType()) + prior * F.col("_book_rate"))
            / (F.col("nuts2_loans_12m").cast(T.DoubleType()) + prior))
    return (per_region.join(book, on=CUTOFF).withColumn("nuts2_default_rate_12m", rate)
            .drop("_defaults", "_book_rate").filter(F.col("nuts2_code").isNotNull()))


def _payment_behaviour(payments: DataFrame, cutoffs: DataFrame) -> DataFrame:
    """`loan_features._payment_behaviour` per cutoff: payments picked by any version's due date in the 12 months,
    then read as of the cutoff with all their versions (a delete holds the key only)."""
    widest = max(WINDOWS_MONTHS)
    due = (payments.join(F.broadcast(cutoffs.select(CUTOFF, f"_due_after_{widest}")),
                         (F.col("due_date") > F.col(f"_due_after_{widest}")) & (F.col("due_date") <= F.col(CUTOFF)))
           .select(CUTOFF, "payment_id").distinct())
    small = F.broadcast(cutoffs.select(CUTOFF, _END, *(f"_due_after_{m}" for m in WINDOWS_MONTHS)))
    versions = payments.join(due, on="payment_id").join(small, on=CUTOFF).filter(F.col(KNOWN_AT) < F.col(_END))
    known = _last_per_key(versions, ["payment_id"])
    late = F.col("status").isin(*NOT_PAID_ON_TIME)
    return known.groupBy(CUTOFF, "loan_id").agg(
        *(F.sum(F.when(late & (F.col("due_date") > F.col(f"_due_after_{m}")), 1).otherwise(0)).cast(T.IntegerType())
          .alias(f"missed_payments_{m}m") for m in WINDOWS_MONTHS),
        _fdiv(F.coalesce(F.sum("amount_paid"), F.lit(0.0)), F.coalesce(F.sum("amount_due"), F.lit(0.0)))
        .alias("paid_over_due_12m"),
    )


def _collateral_values(collaterals: DataFrame, cutoffs: DataFrame) -> DataFrame:
    """`loan_features._collateral_values` per cutoff: the first versions' values, the latest appraisals on or
    before the cutoff, and the type of the largest (nulls first, as polars sorts; ties by collateral)."""
    known = _known_by(collaterals, cutoffs)
    first_version = Window.partitionBy(CUTOFF, "collateral_id").orderBy(F.col(LSN).asc(), F.col(OFFSET).asc())
    first = (known.withColumn("_rank", F.row_number().over(first_version)).filter(F.col("_rank") == 1)
             .groupBy(CUTOFF, "loan_id").agg(
                 F.coalesce(F.sum("appraised_value"), F.lit(0.0)).alias("_value_origination")))
    latest = _last_per_key(known, ["collateral_id"]).filter(F.col("appraisal_date") <= F.col(CUTOFF))
    largest = Window.partitionBy(CUTOFF, "loan_id").orderBy(F.col("appraised_value").desc_nulls_first(),
                                                            F.col("collateral_id").asc())
    current = (latest.withColumn("_rank", F.row_number().over(largest)).groupBy(CUTOFF, "loan_id").agg(
        F.coalesce(F.sum("appraised_value"), F.lit(0.0)).alias("_value_current"),
        F.max(F.when(F.col("_rank") == 1, F.col("collateral_type"))).alias("collateral_type")))
    return first.join(current, on=[CUTOFF, "loan_id"], how="full")


def _features(spark: SparkSession, known: SparkKnownHistories, postcodes: pl.DataFrame,
              cutoffs: list[date]) -> DataFrame:
    cut = _cutoffs(spark, cutoffs)
    active = _as_of(known.loans, "loan_id", cut).filter(F.col("status") == "active")
    borrowers = _as_of(known.borrowers, "borrower_id", cut)
    regions = _regions(borrowers, _postcode_nuts2(spark, known.borrowers, postcodes))
    seen = _seen_in_window(known.loans, cut)

    monthly_rate = F.col("interest_rate") / F.lit(12)
    annuity = _fdiv(F.col("principal") * monthly_rate,
                    F.lit(1) - F.pow(F.lit(1) + monthly_rate, -F.col("term_months").cast(T.DoubleType())))
    instalment = F.when(monthly_rate > 0, annuity).otherwise(_fdiv(F.col("principal"), F.col("term_months")))
    frame = (
        active.join(borrowers.select(CUTOFF, *HISTORY_COLUMNS["borrowers"]), on=[CUTOFF, "borrower_id"], how="left")
        .join(regions, on=[CUTOFF, "borrower_id"], how="left")
        .join(_region_default_rates(seen, regions), on=[CUTOFF, "nuts2_code"], how="left")
        .join(_collateral_values(known.collaterals, cut), on=[CUTOFF, "loan_id"], how="left")
        .join(_payment_behaviour(known.payments, cut), on=[CUTOFF, "loan_id"], how="left")
        .join(_max_dpd(seen), on=[CUTOFF, "loan_id"], how="left")
        .join(F.broadcast(cut.select(CUTOFF, "_cy", "_cm", "_cd")), on=CUTOFF)
        .withColumn("instalment", instalment)
        .withColumn("seasoning_months", _months_between(F.col("origination_date")))
    )
    remaining = F.col("term_months") - F.col("seasoning_months")
    columns = {
        "loan_id": F.col("loan_id"), CUTOFF: F.col(CUTOFF), "borrower_id": F.col("borrower_id"),
        "product": F.col("product"), "borrower_type": F.col("borrower_type"),
        "employment_status": F.col("employment_status"),
        "collateral_type": F.coalesce(F.col("collateral_type"), F.lit("none")), "country_code": F.col("country_code"),
        "nuts2_code": F.col("nuts2_code"), "age_band": _age_band(F.col("birth_date")),
        "annual_income": F.col("annual_income"), "interest_rate": F.col("interest_rate"),
        "principal": F.col("principal"), "term_months": F.col("term_months"), "instalment": F.col("instalment"),
        "debt_to_income": _fdiv(F.lit(12) * F.col("instalment"), F.col("annual_income")),
        "ltv_origination": _fdiv(F.col("principal"), F.col("_value_origination")),
        "ltv_current": _fdiv(F.col("outstanding_principal"), F.col("_value_current")),
        "utilisation": _fdiv(F.col("outstanding_principal"), F.col("principal")),
        "seasoning_months": F.col("seasoning_months"),
        # polars' clip keeps a null; Spark's greatest would make it 0
        "remaining_term_months": F.when(remaining < 0, F.lit(0)).otherwise(remaining),
        "days_past_due": F.col("days_past_due"),
        **{f"max_dpd_{m}m": F.coalesce(F.col(f"max_dpd_{m}m"), F.col("days_past_due")) for m in WINDOWS_MONTHS},
        **{f"missed_payments_{m}m": F.coalesce(F.col(f"missed_payments_{m}m"), F.lit(0)) for m in WINDOWS_MONTHS},
        "paid_over_due_12m": F.col("paid_over_due_12m"),
        "nuts2_default_rate_12m": F.col("nuts2_default_rate_12m"),
        "nuts2_loans_12m": F.col("nuts2_loans_12m"),
    }
    types = spark_schema(feature_schema())
    return frame.select(*(columns[f.name].cast(f.dataType).alias(f.name) for f in types.fields))


def spark_loan_features(spark: SparkSession, known: SparkKnownHistories, postcodes: pl.DataFrame,
                        cutoffs: Iterable[date]) -> DataFrame:
    """`loan_features.loan_features` on Spark: the feature rows of the loans active at each cutoff, sorted by
    (cutoff, loan), the columns and types of `feature_schema()`. `postcodes`: (country_code, postcode, nuts3_code)."""
    ordered = sorted(set(cutoffs))
    if not ordered:
        return spark.createDataFrame([], spark_schema(feature_schema()))
    out = _features(spark, known, postcodes, ordered).orderBy(CUTOFF, "loan_id")
    assert out.columns == FEATURE_COLUMNS
    return out


def spark_cutoffs_with_outcome(known: SparkKnownHistories, cutoffs: Iterable[date]) -> list[date]:
    """`outcomes.cutoffs_with_outcome`: the cutoffs whose 12-month outcome window the source clock has passed."""
    through = known.known_through
    return [] if through is None else [c for c in sorted(set(cutoffs))
                                       if cutoff_end(outcome_window_end(c)) <= through]


def spark_default_outcomes(spark: SparkSession, known: SparkKnownHistories, cutoffs: Iterable[date]) -> DataFrame:
    """`outcomes.default_outcomes` on Spark: (loan_id, cutoff_date, default_12m, defaulted_on) for the loans active
    at each cutoff whose 12 months the clock has passed, sorted by (cutoff, loan)."""
    with_outcome = spark_cutoffs_with_outcome(known, cutoffs)
    if not with_outcome:
        return spark.createDataFrame([], spark_schema(OUTCOME_SCHEMA))
    utc = pa.timestamp("us", tz="UTC")
    cut = spark.createDataFrame(pa.table({
        CUTOFF: pa.array(with_outcome, pa.date32()),
        _END: pa.array([cutoff_end(c) for c in with_outcome], utc),
        "_window_end": pa.array([cutoff_end(outcome_window_end(c)) for c in with_outcome], utc),
    }))
    active = _as_of(known.loans, "loan_id", cut).filter(F.col("status") == "active").select(CUTOFF, "loan_id")
    defaults = (known.loans.filter(F.col("status").isin(*DEFAULTED))
                .join(F.broadcast(cut), (F.col(KNOWN_AT) >= F.col(_END)) & (F.col(KNOWN_AT) < F.col("_window_end")))
                .groupBy(CUTOFF, "loan_id").agg(_utc_date(F.min(KNOWN_AT)).alias("defaulted_on")))
    joined = active.join(defaults, on=[CUTOFF, "loan_id"], how="left")
    columns = {"loan_id": F.col("loan_id"), CUTOFF: F.col(CUTOFF),
               "default_12m": F.when(F.col("defaulted_on").isNotNull(), 1).otherwise(0),
               "defaulted_on": F.col("defaulted_on")}
    types = spark_schema(OUTCOME_SCHEMA)
    return (joined.select(*(columns[f.name].cast(f.dataType).alias(f.name) for f in types.fields))
            .orderBy(CUTOFF, "loan_id"))


# --- the curated tables in, polars out (for the assets) -----------------------------------------------------------


def read_history_tables(spark: SparkSession, history_uris: dict[str, str]) -> dict[str, DataFrame]:
    """The curated history Delta tables the features read (`curated/{loans,borrowers,collaterals,payments}_history`,
    the columns of `HISTORY_COLUMNS` and the version columns), with Spark."""
    missing = set(HISTORY_COLUMNS) - set(history_uris)
    if missing:
        raise ValueError(f"no location for the histories {sorted(missing)}")
    return {name: spark.read.format("delta").load(history_uris[name]).select(*columns, *VERSION)
            for name, columns in HISTORY_COLUMNS.items()}


def spark_known_histories_from_delta(spark: SparkSession, history_uris: dict[str, str]) -> SparkKnownHistories:
    return spark_known_histories(spark, read_history_tables(spark, history_uris))


def loan_features_with_spark(spark: SparkSession, known: SparkKnownHistories, postcodes: pl.DataFrame,
                             cutoffs: Iterable[date]) -> pl.DataFrame:
    """The features of `cutoffs`, computed by Spark and returned as polars, as `loan_features` returns them."""
    return to_polars(spark_loan_features(spark, known, postcodes, cutoffs), feature_schema())


def default_outcomes_with_spark(spark: SparkSession, known: SparkKnownHistories,
                                cutoffs: Iterable[date]) -> pl.DataFrame:
    """`default_outcomes`, computed by Spark, as polars."""
    return to_polars(spark_default_outcomes(spark, known, cutoffs), OUTCOME_SCHEMA)
