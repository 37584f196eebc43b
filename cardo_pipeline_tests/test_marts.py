"""The dbt marts on the real stack: a book through Kafka, raw, curated, features, the PD model and its scores, then
`@dbt_assets` building the marts in DuckDB from the Delta tables, their dbt tests as Dagster asset checks and their
charts in the UI. One cutoff's KPIs and regional concentration are recomputed with polars straight from the Delta
tables and must equal the marts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from cardo_pipeline.defs.features.loans import cutoff_partitions, known_cutoff_partitions
from cardo_pipeline.defs.groups import MARTS, SOURCES
from cardo_pipeline.defs.marts.assets import MARTS_JOB
from cardo_pipeline.defs.models.pd import PD_SCORES
from cardo_pipeline.defs.resources import LakeResource, MartsResource, PdModelResource
from cardo_pipeline.features.clock import as_of, cutoff_end
from cardo_pipeline.features.loan_features import KnownHistories, months_before
from cardo_pipeline.geo.postcodes import normalise_postcode
from cardo_pipeline.marts import dbt_project_dir
from cardo_pipeline.marts.duckdb import connect
from cardo_pipeline.settings import ensure_dagster_home
from cardo_pipeline_tests.browser_helpers import Browser, dagster_dev
from cardo_pipeline_tests.raw_helpers import fresh_prefix, produce_book
from cardo_pipeline_tests.test_quality_checks import definitions

pytestmark = pytest.mark.stack
LGD = 0.3  # not dbt's default (0.45): the resource's value must reach the SQL
MARTS_MODELS = ("loan_tape", "portfolio_kpis", "concentration_by_region", "pd_by_region", "vintage_curves")


@dataclass
class BuiltMarts:
    root: Path
    lake: Path
    database: Path
    dagster_home: Path
    months: list[str]
    result: dg.ExecuteInProcessResult

    def mart(self, name: str, where: str = "true") -> pl.DataFrame:
        with connect(self.database, read_only=True) as conn:
            return conn.sql(f"select * from {name} where {where}").pl()


@pytest.fixture(scope="module")
def built(kafka_bootstrap: str, servicing_dsn: str, mlflow_tracking_uri: str,
          tmp_path_factory: pytest.TempPathFactory) -> BuiltMarts:
    root = tmp_path_factory.mktemp("marts")
    prefix = fresh_prefix("marts")
    produce_book(kafka_bootstrap, prefix, loans=900, months=18, seed=13)
    model_name = f"cardo_pd_marts_{uuid.uuid4().hex[:8]}"
    database = root / "marts.duckdb"
    code_location = definitions(
        root, kafka_bootstrap, prefix, servicing_dsn, reconcile_with_source=False,
        pd_settings=PdModelResource(tracking_uri=mlflow_tracking_uri, registered_model=model_name,
                                    experiment=model_name, test_cutoffs=2, oracle_from_simulator=False),
        marts=MartsResource(database=str(database), lgd=LGD))
    job = code_location.resolve_implicit_global_asset_job_def()
    graph = code_location.resolve_asset_graph()
    home = root / "dagster_home"
    ensure_dagster_home(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        def run(selection, **kwargs) -> dg.ExecuteInProcessResult:
            result = job.execute_in_process(instance=instance, asset_selection=selection, raise_on_error=False,
                                            **kwargs)
            assert result.success, [e.message for e in result.all_events if e.is_failure]
            return result

        marts = [k for k in graph.get_all_asset_keys() if graph.get(k).group_name == MARTS]
        modelling = [k for k in graph.get_all_asset_keys() if graph.get(k).partitions_def is not None
                     or k.path[0] == "models" or k.path[-1] == "loan_default_outcomes"]
        upstream = [k for k in graph.get_all_asset_keys() if graph.get(k).is_executable
                    and graph.get(k).group_name != SOURCES and k not in marts and k not in modelling
                    and k.path[0] not in ("iceberg",)]
        run(upstream)
        months = known_cutoff_partitions(LakeResource(root=str(root / "lake")), cutoff_partitions())
        run(modelling, tags={"dagster/asset_partition_range_start": months[0],
                             "dagster/asset_partition_range_end": months[-1]})
        result = run(marts)
    return BuiltMarts(root, root / "lake", database, home, months, result)


def test_the_marts_are_built_with_their_dbt_tests_as_passing_checks(built: BuiltMarts) -> None:
    materialized = {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
                    for e in built.result.get_asset_materialization_events()}
    for name in MARTS_MODELS:
        metadata = materialized[f"marts/{name}"]
        assert metadata["dagster/row_count"] == built.mart(name).height > 0, name
    # the charts, as markdown images
    charts = {"portfolio_kpis": "delinquency_over_time", "concentration_by_region": "concentration_nuts2",
              "vintage_curves": "vintage_curves", "pd_by_region": "pd_distribution"}
    for mart, chart in charts.items():
        assert materialized[f"marts/{mart}"][chart].startswith("![") and "(data:image/png;base64," in \
            materialized[f"marts/{mart}"][chart], mart
    # DuckDB's delta extension reads the curated loans as the project's own reader does (deletion vectors applied)
    from cardo_pipeline.curate.merge_on_read import read_live

    assert materialized["staging/stg_curated__loans"]["dagster/row_count"] == read_live(
        str(built.lake / "curated" / "loans"), columns=["loan_id"]).height > 0
    assert "| balance_outstanding |" in materialized["marts/portfolio_kpis"]["latest_cutoff"]

    checks = {(c.asset_key.to_user_string(), c.check_name): c for c in built.result.get_asset_check_evaluations()}
    failed = sorted(key for key, c in checks.items() if not c.passed)
    assert not failed, failed
    names = {name for _, name in checks}
    # the custom tests and each kind of generic one
    for expected in ("shares_sum_to_one_concentration_by_region_balance_share__cutoff_date__nuts_level",
                     "delinquency_balances_sum_to_the_balance", "delinquency_counts_sum_to_the_count"):
        assert expected in names, sorted(names)
    for kind in ("unique_", "not_null_", "relationships_", "accepted_values_", "unique_combination_",
                 "non_decreasing_"):
        assert any(name.startswith(kind) for name in names), kind


def test_the_marts_depend_on_the_upstream_dagster_assets(built: BuiltMarts) -> None:
    """One lineage graph: from each Kafka topic through raw, curated and features to the marts."""
    graph = definitions(built.root, "127.0.0.1:9", "x", "host=127.0.0.1 port=9").resolve_asset_graph()
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
               for k in graph.get_all_asset_keys()}
    assert parents["staging/stg_curated__loans"] == {"curated/loans"}
    assert parents["staging/stg_models__pd_scores"] == {"models/pd_scores"}
    assert parents["staging/stg_features__loan_snapshots"] == {"features/loan_snapshots"}
    assert "marts/loan_tape" in parents["marts/portfolio_kpis"]

    def ancestors(key: str) -> set[str]:
        seen, todo = set(), [key]
        while todo:
            for parent in parents.get(todo.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return seen

    upstream = ancestors("marts/portfolio_kpis")
    for table in ("loans", "borrowers", "collaterals", "payments"):
        assert f"raw/{table}" in upstream and f"curated/{table}_history" in upstream, table
    assert any(key.startswith("servicing/") or "kafka" in key or key.startswith("sources/") or key.count("/") == 0
               for key in upstream if key not in parents or not parents[key]), sorted(upstream)


def _recompute(built: BuiltMarts, cutoff: date) -> tuple[dict, pl.DataFrame]:
    """portfolio_kpis and concentration_by_region of one cutoff, from the Delta tables with polars: the curated
    histories as known at the cutoff and at the month before, the features' LTV and remaining term, the champion's
    scores and the TERCET postcodes."""
    lake = built.lake
    known = KnownHistories.from_histories({name: pl.scan_delta(str(lake / "curated" / f"{name}_history"))
                                           for name in ("loans", "borrowers", "collaterals", "payments")})
    now = as_of(known.loans.lazy(), "loan_id", cutoff_end(cutoff)).collect()
    before = as_of(known.loans.lazy(), "loan_id", cutoff_end(months_before(cutoff, 1))).collect()
    features = pl.read_delta(str(lake / "features" / "loan_features")).filter(pl.col("cutoff_date") == cutoff)
    scores = pl.read_delta(str(lake / "models" / "pd_scores")).filter(pl.col("cutoff_date") == cutoff)
    performing = (now.filter(pl.col("status") == "active")
                  .join(features.select("loan_id", "ltv_current", "remaining_term_months"), on="loan_id", how="left")
                  .join(scores.select("loan_id", "pd_12m"), on="loan_id", how="left"))
    balance = performing["outstanding_principal"]
    dpd = performing["days_past_due"]
    buckets = {"current": dpd <= 0, "1_29": (dpd > 0) & (dpd < 30), "30_59": (dpd >= 30) & (dpd < 60),
               "60_89": (dpd >= 60) & (dpd < 90), "90_plus": dpd >= 90}

    def weighted(column: str) -> float:  # over the loans whose value is known
        known_rows = performing.filter(pl.col(column).is_not_null())
        return (known_rows[column] * known_rows["outstanding_principal"]).sum() / known_rows[
            "outstanding_principal"].sum()

    non_performing = now.filter(pl.col("status") == "defaulted")
    kpis = {
        "loans_outstanding": performing.height,
        "balance_outstanding": balance.sum(),
        "wa_interest_rate": weighted("interest_rate"),
        "wa_ltv": weighted("ltv_current"),
        "wa_remaining_term_months": weighted("remaining_term_months"),
        "wa_pd_12m": weighted("pd_12m"),
        "loans_scored": performing["pd_12m"].is_not_null().sum(),
        "expected_loss": (performing["pd_12m"] * balance * LGD).sum(),
        "expected_loss_rate": (performing["pd_12m"] * balance * LGD).sum() / balance.sum(),
        "lgd": LGD,
        "loans_non_performing": non_performing.height,
        "balance_non_performing": non_performing["outstanding_principal"].sum(),
        "npl_ratio": non_performing["outstanding_principal"].sum() / (balance.sum()
                                                                      + non_performing["outstanding_principal"].sum()),
    }
    for bucket, mask in buckets.items():
        kpis[f"dpd_{bucket}_count"] = int(mask.sum())
        kpis[f"dpd_{bucket}_balance"] = balance.filter(mask).sum()
    # the month's flows: loans performing at the previous cutoff and still in the source now
    opening = before.filter(pl.col("status") == "active").select(
        "loan_id", pl.col("outstanding_principal").alias("opening")).join(now, on="loan_id", how="inner")
    seasoning = ((cutoff.year * 12 + cutoff.month) - (pl.col("origination_date").dt.year() * 12
                 + pl.col("origination_date").dt.month()) - (pl.col("origination_date").dt.day() > cutoff.day))
    # the annuity's principal due in the month, on the opening balance over the months left a month ago
    rate, left = pl.col("interest_rate") / 12, pl.max_horizontal(pl.col("term_months") - seasoning + 1, pl.lit(1))
    instalment = pl.when(rate > 0).then(pl.col("opening") * rate / (1 - (1 + rate).pow(-left.cast(pl.Float64)))) \
        .otherwise(pl.col("opening") / left)
    opening = opening.with_columns(seasoning.alias("seasoning"), (instalment - pl.col("opening") * rate).clip(
        0, None).alias("_due")).with_columns(pl.min_horizontal("_due", "opening").alias("scheduled"))
    defaulted = opening.filter(pl.col("status").is_in(["defaulted", "written_off"]))
    prepaid = opening.filter((pl.col("status") == "repaid") & (pl.col("seasoning") < pl.col("term_months")))
    opening_balance, scheduled = opening["opening"].sum(), opening["scheduled"].sum()
    unscheduled = (prepaid["opening"] - prepaid["scheduled"]).sum()
    smm = unscheduled / (opening_balance - scheduled)
    mdr = defaulted["opening"].sum() / opening_balance
    kpis |= {"loans_at_month_start": opening.height, "balance_at_month_start": opening_balance,
             "scheduled_principal": scheduled, "defaults_in_month": defaulted.height,
             "defaulted_balance": defaulted["opening"].sum(), "default_rate": mdr,
             "default_rate_count": defaulted.height / opening.height, "default_rate_annualised": 1 - (1 - mdr) ** 12,
             "prepayments_in_month": prepaid.height, "prepaid_balance": unscheduled, "prepayment_rate_smm": smm,
             "cpr": 1 - (1 - smm) ** 12}

    # regions: the borrower's postcode at the cutoff, normalised, to NUTS3 by TERCET
    borrowers = as_of(known.borrowers.lazy(), "borrower_id", cutoff_end(cutoff)).collect()
    postcodes = pl.read_delta(str(lake / "reference" / "postcode_nuts3"), columns=["country_code", "postcode",
                                                                                   "nuts3_code"])
    homes = borrowers.select("borrower_id", "country_code", pl.struct("country_code", "postcode").map_elements(
        lambda r: normalise_postcode(r["country_code"], r["postcode"]), return_dtype=pl.String).alias("postcode"))
    located = performing.select("borrower_id", "outstanding_principal").join(homes, on="borrower_id", how="left").join(
        postcodes, on=["country_code", "postcode"], how="left")
    levels = []
    for level in (1, 2, 3):
        code = pl.col("nuts3_code").str.slice(0, level + 2).fill_null("unmatched").alias("region_code")
        shares = located.group_by(code).agg(pl.len().alias("loans"), pl.col("outstanding_principal").sum()
                                            .alias("balance"))
        shares = shares.with_columns((pl.col("balance") / pl.col("balance").sum()).alias("balance_share"),
                                     pl.lit(level).alias("nuts_level"))
        top = shares.sort(["balance", "region_code"], descending=[True, False]).head(10)
        levels.append(shares.with_columns(pl.lit((shares["balance_share"] ** 2).sum()).alias("hhi"),
                                          pl.lit(top["balance_share"].sum()).alias("top_10_share"),
                                          pl.col("region_code").is_in(top["region_code"].to_list())
                                          .alias("is_top_10")))
    return kpis, pl.concat(levels).sort("nuts_level", "region_code")


def test_polars_recomputes_one_cutoffs_kpis_and_concentration_from_the_delta_tables(built: BuiltMarts) -> None:
    all_kpis = built.mart("portfolio_kpis").sort("cutoff_date")
    # the newest cutoff with both defaults and prepayments, so that every flow is exercised
    busy = all_kpis.filter((pl.col("defaults_in_month") > 0) & (pl.col("prepayments_in_month") > 0)
                           & (pl.col("loans_non_performing") > 0))
    assert busy.height, all_kpis.select("cutoff_date", "defaults_in_month", "prepayments_in_month")
    cutoff = busy["cutoff_date"][-1]
    kpis, concentration = _recompute(built, cutoff)
    [mart] = all_kpis.filter(pl.col("cutoff_date") == cutoff).to_dicts()
    assert kpis["loans_outstanding"] > 100 and kpis["defaults_in_month"] > 0 and kpis["prepayments_in_month"] > 0
    assert not set(mart) - set(kpis) - {"cutoff_date", "cdr_12m", "cpr_12m"}, set(mart) - set(kpis)
    for name, expected in kpis.items():
        assert mart[name] == pytest.approx(expected, rel=1e-9, abs=1e-9), name
    # the trailing 12 months compound the monthly rates of the mart
    window = all_kpis.filter(pl.col("cutoff_date") <= cutoff).tail(12)
    if window.height == 12:
        assert mart["cpr_12m"] == pytest.approx(1 - (1 - window["prepayment_rate_smm"]).product(), rel=1e-9)
        assert mart["cdr_12m"] == pytest.approx(1 - (1 - window["default_rate"]).product(), rel=1e-9)
    else:
        assert mart["cpr_12m"] is None and mart["cdr_12m"] is None
    assert sum(kpis[f"dpd_{b}_count"] for b in ("current", "1_29", "30_59", "60_89", "90_plus")) == \
        kpis["loans_outstanding"]

    regions = built.mart("concentration_by_region", f"cutoff_date = '{cutoff}'").sort("nuts_level", "region_code")
    assert regions["region_code"].to_list() == concentration["region_code"].to_list()
    assert regions["nuts_level"].to_list() == concentration["nuts_level"].to_list()
    assert regions["loans"].to_list() == concentration["loans"].to_list()
    for column in ("balance", "balance_share", "hhi", "top_10_share"):
        assert regions[column].to_list() == pytest.approx(concentration[column].to_list(), rel=1e-9), column
    assert regions["is_top_10"].to_list() == concentration["is_top_10"].to_list()
    print(json.dumps({"cutoff": str(cutoff), **{k: round(v, 6) if isinstance(v, float) else v
                                                for k, v in kpis.items()}}))


def test_pd_by_region_and_vintages_agree_with_the_tape(built: BuiltMarts) -> None:
    tape = built.mart("loan_tape")
    scores = pl.read_delta(str(built.lake / "models" / PD_SCORES.path[-1]).replace(
        "/models/pd_scores", "/models/pd_scores"))
    performing = tape.filter(pl.col("is_performing"))
    assert performing.height == scores.height  # every performing loan of every cutoff is scored
    assert performing["pd_12m"].null_count() == 0
    by_region = built.mart("pd_by_region")
    assert by_region["loans"].sum() == performing.height
    assert by_region["expected_loss"].sum() == pytest.approx((performing["pd_12m"]
                                                              * performing["outstanding_principal"] * LGD).sum())
    vintages = built.mart("vintage_curves")
    originated = tape.group_by("vintage").agg(pl.col("loan_id").n_unique().alias("n"))
    for row in vintages.unique("vintage").to_dicts():
        assert row["loans_originated"] == originated.filter(pl.col("vintage") == row["vintage"])["n"][0]
    final = vintages.sort("months_on_book").group_by("vintage").last()
    defaulted = tape.filter(pl.col("closed_as") == "defaulted").group_by("vintage").agg(pl.len().alias("n"))
    for row in final.to_dicts():
        expected = defaulted.filter(pl.col("vintage") == row["vintage"])["n"]
        assert row["cumulative_defaults"] <= (expected[0] if expected.len() else 0)


def test_dbt_tests_catch_shares_that_do_not_sum_to_one_and_buckets_that_miss_the_total(built: BuiltMarts,
                                                                                        tmp_path: Path) -> None:
    """The custom tests fail on broken marts (a copy of the database, tampered with)."""
    broken = tmp_path / "broken.duckdb"
    shutil.copy(built.database, broken)
    with connect(broken) as conn:
        conn.execute("update concentration_by_region set balance_share = balance_share * 1.01 where nuts_level = 2")
        conn.execute("update portfolio_kpis set dpd_current_count = dpd_current_count + 1")
    dbt = Path(sys.executable).parent / "dbt"
    completed = subprocess.run(
        [str(dbt), "test", "--profiles-dir", str(dbt_project_dir()), "--target-path", str(tmp_path / "target"),
         "--select", "concentration_by_region", "portfolio_kpis",
         "--vars", json.dumps({"lake_root": str(built.lake), "marts_database": str(broken)})],
        cwd=dbt_project_dir(), capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0
    results = json.loads((tmp_path / "target" / "run_results.json").read_text())["results"]
    failed = {r["unique_id"].split(".")[2] for r in results if r["status"] == "fail"}
    assert any(name.startswith("shares_sum_to_one_concentration_by_region") for name in failed), failed
    assert "delinquency_counts_sum_to_the_count" in failed, failed
    assert "delinquency_balances_sum_to_the_balance" not in failed, failed


def test_a_failing_dbt_test_is_a_failed_check_and_the_models_before_it_are_materialized(built: BuiltMarts,
                                                                                        tmp_path: Path) -> None:
    """A source with a repeated key: its staging view's key test fails as a Dagster check, dbt skips what follows,
    the views built before it are still materialized, and the step fails."""
    lake = tmp_path / "lake"
    for group in ("curated", "features", "models", "reference"):
        for table in (built.lake / group).iterdir():
            (lake / group).mkdir(parents=True, exist_ok=True)
            if table.name != "loan_snapshots":
                (lake / group / table.name).symlink_to(table)
    snapshots = pl.read_delta(str(built.lake / "features" / "loan_snapshots"))
    pl.concat([snapshots, snapshots.head(1)]).write_delta(str(lake / "features" / "loan_snapshots"),
                                                          delta_write_options={"partition_by": ["cutoff_date"]})
    code_location = definitions(tmp_path, "127.0.0.1:9", "servicing", "host=127.0.0.1 port=9",
                                marts=MartsResource(database=str(tmp_path / "marts.duckdb")))
    with dg.instance_for_test() as instance:
        result = code_location.resolve_job_def(MARTS_JOB).execute_in_process(instance=instance,
                                                                             raise_on_error=False)
    assert not result.success
    checks = {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}
    key = ("staging/stg_features__loan_snapshots",
           "unique_combination_stg_features__loan_snapshots_loan_id__cutoff_date")
    assert key in checks and not checks[key].passed, sorted(checks)
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "staging/stg_features__loan_snapshots" in materialized and "marts/loan_tape" not in materialized


@pytest.mark.browser
def test_a_marts_page_in_the_ui_shows_its_chart(built: BuiltMarts, test_env: dict[str, str],
                                                tmp_path: Path) -> None:
    with dagster_dev(built.dagster_home, test_env, tmp_path / "dagster-dev.log") as url, \
            Browser(tmp_path / "chromium-profile") as browser:
        browser.open(f"{url}/assets/marts/concentration_by_region")
        show = "[...document.querySelectorAll('a')].find(a => a.textContent === '[Show Markdown]')"
        browser.wait_for(f"!!{show}", timeout_s=90)
        browser.evaluate(f"{show}.click()")
        images = browser.wait_for("[...document.querySelectorAll('img[src^=\"data:image/png;base64,\"]')]"
                                  ".filter(i => i.complete && i.naturalWidth > 0)"
                                  ".map(i => [i.alt, i.naturalWidth, i.naturalHeight])", timeout_s=30)
        screenshot = browser.screenshot(tmp_path / "mart-concentration-chart.png")
    assert images == [["concentration by NUTS2", 750, 450]], images
    assert screenshot.stat().st_size > 20_000
    print(f"screenshot: {screenshot}")
