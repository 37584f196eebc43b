"""`cardo bench model`: the PD model's training on a simulated book of 100,000 loans, 24 labelled monthly cutoffs.

The book is simulated in memory (`simulator.history`: the SCD2 histories the CDC path would build, without Kafka or
Postgres), the features and outcomes are built by the same functions as the assets, and the training is the asset's
(`model.training.train_pd_model`: both families, cross-validated search, calibration). The bound is on training:
fit_seconds, the time the model families take to fit, under 180 s; simulation and features are reported beside it.
"""

from __future__ import annotations

import tempfile
import time
from datetime import date
from pathlib import Path

from cardo_pipeline.bench.memory import PeakTreeRss

FIT_SECONDS_BOUND = 180.0
ORACLE_RATIO_BAR = 0.95


def bench_model(loans: int = 100_000, months: int = 37, cutoffs: int = 24, *, seed: int = 42, log=print) -> dict:
    with PeakTreeRss() as peak:  # the search's worker processes included
        result = _bench_model(loans, months, cutoffs, seed=seed, log=log)
    return result | {"peak_rss_mb": peak.mb}


def _bench_model(loans: int, months: int, cutoffs: int, *, seed: int, log) -> dict:

    from cardo_pipeline.features.loan_features import KnownHistories, cutoffs_known, loan_features
    from cardo_pipeline.features.outcomes import cutoffs_with_outcome, default_outcomes
    from cardo_pipeline.geo.postcodes import postcode_nuts3
    from cardo_pipeline.model.training import labelled_features, train_pd_model
    from cardo_pipeline.simulator.history import simulated_histories

    started = time.monotonic()
    log(f"simulating {loans:,} loans over {months} months in memory")
    simulated = simulated_histories(loans=loans, months=months, seed=seed)
    simulate_seconds = time.monotonic() - started

    started = time.monotonic()
    known = KnownHistories.from_histories(simulated.histories)
    labelled_cutoffs = cutoffs_with_outcome(known, cutoffs_known(known, date(2024, 1, 1)))[:cutoffs]
    log(f"features and outcomes for {len(labelled_cutoffs)} cutoffs ({labelled_cutoffs[0]}..{labelled_cutoffs[-1]})")
    postcodes = postcode_nuts3().select("country_code", "postcode", "nuts3_code")
    labelled = labelled_features(loan_features(known, postcodes, labelled_cutoffs),
                                 default_outcomes(known, labelled_cutoffs))
    features_seconds = time.monotonic() - started
    del known

    log(f"training on {labelled.height:,} loan-months")
    with tempfile.TemporaryDirectory() as tmp:
        result = train_pd_model(labelled, truth=simulated.truth, plots_dir=Path(tmp))
    fit_seconds = sum(m.fit_seconds for m in result.candidates)
    metrics = result.metrics
    ratio = result.oracle["auc_over_oracle"] if result.oracle else None
    return {
        "benchmark": "model", "loans": loans, "months": months, "cutoffs": len(labelled_cutoffs),
        "rows": labelled.height, "train_rows": result.split.train.height, "test_rows": result.split.test.height,
        "defaults": int(labelled["default_12m"].sum()), "family": result.chosen.family,
        "fit_seconds": round(fit_seconds, 1), "train_seconds": round(result.seconds, 1),
        "fit_seconds_by_family": {m.family: round(m.fit_seconds, 1) for m in result.candidates},
        "simulate_seconds": round(simulate_seconds, 1), "features_seconds": round(features_seconds, 1),
        "auc": round(metrics["auc"], 4), "oracle_auc": round(metrics["oracle_auc"], 4) if ratio else None,
        "auc_over_oracle": round(ratio, 4) if ratio else None, "gini": round(metrics["gini"], 4),
        "ks": round(metrics["ks"], 4), "brier": round(metrics["brier"], 5),
        "passed": fit_seconds < FIT_SECONDS_BOUND and ratio is not None and ratio >= ORACLE_RATIO_BAR,
        "truth_rows": simulated.truth.height,
    }
