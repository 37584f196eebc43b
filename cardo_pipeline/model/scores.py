"""`models/pd_scores`: the champion's PD of every loan active at a cutoff, its score distribution, and the population
stability index (PSI) of each cutoff's scores against the scores the champion was trained on."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandera.polars as pa
import polars as pl

from cardo_pipeline.quality.models import Severity, model, row_check

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# PSI's rule of thumb: below 0.1 the population is stable, 0.1-0.25 it moved, above 0.25 it shifted.
PSI_STABLE, PSI_SHIFTED = 0.1, 0.25
SCHEMA = pl.Schema({"loan_id": pl.Int64(), "cutoff_date": pl.Date(), "pd_12m": pl.Float64(),
                    "risk_grade": pl.String(), "model_version": pl.Int32(), "scored_at": pl.Datetime("us", "UTC")})
# Grades by PD (upper bounds), the way credit committees read a score.
GRADES = ((0.005, "A"), (0.01, "B"), (0.025, "C"), (0.05, "D"), (0.10, "E"), (0.25, "F"))


def risk_grade(pd_12m: pl.Expr) -> pl.Expr:
    grade = pl.when(pd_12m.is_null()).then(None)
    for upper, label in GRADES:
        grade = grade.when(pd_12m < upper).then(pl.lit(label))
    return grade.otherwise(pl.lit("G"))


def score_features(features: pl.DataFrame, estimator, version: int) -> pl.DataFrame:
    """The PD of each feature row, from `estimator` (the champion, model version `version`)."""
    from cardo_pipeline.model.recipe import predict_pd  # scikit-learn: imported by the runs that score only
    from cardo_pipeline.model.training import model_input, pd_feature_spec

    if features.is_empty():
        return pl.DataFrame(schema=SCHEMA)
    scores = predict_pd(estimator, model_input(features, pd_feature_spec()))
    return features.select("loan_id", "cutoff_date").with_columns(
        pl.Series("pd_12m", np.asarray(scores, dtype=np.float64)),
    ).with_columns(risk_grade(pl.col("pd_12m")).alias("risk_grade"), pl.lit(version, pl.Int32).alias("model_version"),
                   pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("scored_at")).select(SCHEMA.names())


def distribution(scores: pl.DataFrame, reference: dict | None) -> dict[str, dict]:
    """Per cutoff: rows, mean PD, quantiles, share per grade, PSI against the training scores (None without them)."""
    from cardo_pipeline.model.metrics import psi_against

    out = {}
    for (cutoff,), part in scores.sort("cutoff_date").group_by("cutoff_date", maintain_order=True):
        values = part["pd_12m"].to_numpy()
        psi = psi_against(reference, values) if reference and len(values) else None
        out[str(cutoff)] = {
            "rows": part.height, "mean_pd": round(float(values.mean()), 5),
            **{f"p{int(q * 100)}": round(float(np.quantile(values, q)), 5) for q in QUANTILES},
            "grades": dict(part.group_by("risk_grade").len().sort("risk_grade").iter_rows()),
            "psi": None if psi is None else round(psi, 4),
        }
    return out


def pd_scores_model() -> pa.DataFrameSchema:
    return model(
        "PdScores",
        {
            "loan_id": pa.Column(pl.Int64),
            "cutoff_date": pa.Column(pl.Date),
            "pd_12m": pa.Column(pl.Float64, checks=pa.Check.in_range(0, 1)),
            "risk_grade": pa.Column(pl.String, checks=pa.Check.isin([g for _, g in GRADES] + ["G"])),
            "model_version": pa.Column(pl.Int32, checks=pa.Check.ge(1)),
            "scored_at": pa.Column(pl.Datetime("us", "UTC")),
        },
        checks=[row_check("the grade is the PD's", risk_grade(pl.col("pd_12m")) == pl.col("risk_grade"))],
        unique=["loan_id", "cutoff_date"], severity=Severity.ERROR, key=["loan_id", "cutoff_date"],
        description="The champion's 12-month PD of every loan active at a cutoff, a probability, with its grade.",
    )
