"""`make demo` end to end: stack up, a simulated book through Postgres and Debezium, the asset graph run by Dagster,
and `$CARDO_HOME/demo-summary.json` (ARCHITECTURE section 9).

Safe to run twice: a servicing database that already holds a book is not simulated again, and Dagster runs are
idempotent by design of the assets.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import psycopg

from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.settings import CardoSettings, ensure_dagster_home
from cardo_pipeline.stack import Stack
from cardo_pipeline.tables import DEAD_LETTER_PATH, SOURCE_TABLES


@dataclass
class DemoOptions:
    loans: int = 2000
    months: int = 24
    seed: int = 7
    capture_timeout_s: float = 600.0


@dataclass
class DemoResult:
    summary: dict = field(default_factory=dict)
    path: Path | None = None


def source_row_counts(settings: CardoSettings) -> dict[str, int]:
    with psycopg.connect(settings.pg_dsn) as conn:
        return {
            t.name: conn.execute(f'SELECT count(*) FROM public."{t.name}"').fetchone()[0]
            for t in SOURCE_TABLES
        }


def topic_message_counts(settings: CardoSettings) -> dict[str, dict[int, int]]:
    topics = [settings.topic(t.name) for t in SOURCE_TABLES]
    return end_offsets(settings.kafka_bootstrap, topics)


def wait_for_capture(settings: CardoSettings, expected_messages: int, timeout_s: float, log=print) -> int:
    """Wait until Debezium has published at least `expected_messages` and the topics have gone quiet."""
    deadline = time.monotonic() + timeout_s
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        total = sum(sum(p.values()) for p in topic_message_counts(settings).values())
        if total != last:
            last, quiet_since = total, time.monotonic()
        elif total >= expected_messages and time.monotonic() - quiet_since >= 3:
            return total
        time.sleep(1)
    raise TimeoutError(
        f"Debezium published {last} of at least {expected_messages} messages in {timeout_s:.0f} s: "
        f"see {settings.home / 'logs' / 'connect.log'}"
    )


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class _RunLog:
    """What the demo's Dagster runs did, gathered across runs for the summary. A check planned in a run that gave
    no result was skipped (reconciliation does that when the source cannot be compared); a later result wins."""

    def __init__(self, severities: dict[str, str]) -> None:
        self.severities = severities  # "asset:check" -> ERROR | WARN, from the definitions
        self.run_ids: list[str] = []
        self.materialized: set[str] = set()
        self.observed: set[str] = set()
        self.failed_steps: set[str] = set()
        self.checks: dict[str, dict] = {}
        self.success = True

    def add(self, result) -> None:
        self.run_ids.append(result.run_id)
        self.success &= result.success
        self.materialized |= {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        self.observed |= {e.asset_key.to_user_string() for e in result.get_asset_observation_events()}
        self.failed_steps |= {e.step_key for e in result.all_events if e.is_step_failure}
        planned = set()
        for event in result.all_events:
            if event.event_type_value == "ASSET_CHECK_EVALUATION_PLANNED":
                data = event.event_specific_data
                planned.add((data.asset_key.to_user_string(), data.check_name))
            elif event.event_type_value == "ASSET_CHECK_EVALUATION":
                check = event.event_specific_data
                asset, name = check.asset_key.to_user_string(), check.check_name
                planned.discard((asset, name))
                self.checks[f"{asset}:{name}"] = {"asset": asset, "check": name, "severity": check.severity.value,
                                                 "result": "passed" if check.passed else "failed"}
        for asset, name in planned:
            self.checks[f"{asset}:{name}"] = {"asset": asset, "check": name,
                                             "severity": self.severities.get(f"{asset}:{name}", "ERROR"),
                                             "result": "skipped"}

    def as_dict(self) -> dict:
        return {
            "run_ids": self.run_ids,
            "success": self.success,
            "assets_materialized": sorted(self.materialized),
            "assets_observed": sorted(self.observed),
            "assets_failed": sorted(self.failed_steps),
            "asset_checks": [self.checks[k] for k in sorted(self.checks)],
            "asset_checks_passed": sorted(k for k, c in self.checks.items() if c["result"] == "passed"),
            "asset_checks_failed": sorted(k for k, c in self.checks.items() if c["result"] == "failed"),
            "asset_checks_skipped": sorted(k for k, c in self.checks.items() if c["result"] == "skipped"),
        }


def run_asset_graph(settings: CardoSettings, log=print) -> dict:
    """Run the graph as production does, against a persistent instance (the runs show up in `make dev`):
    observe the topics, let the Kafka offsets sensor request the raw runs, then materialize everything else."""
    import dagster as dg

    from cardo_pipeline.definitions import defs
    from cardo_pipeline.defs.features.loans import (
        LOAN_FEATURES,
        LOAN_OUTCOMES,
        LOAN_SNAPSHOTS,
        cutoff_partitions,
        known_cutoff_partitions,
    )
    from cardo_pipeline.defs.groups import MARTS, RAW, SOURCES
    from cardo_pipeline.defs.models.pd import PD_MODEL, PD_SCORES
    from cardo_pipeline.defs.quality.monitoring import MONITORING_JOB
    from cardo_pipeline.defs.raw.sensor import SENSOR_NAME
    from cardo_pipeline.defs.resources import LakeResource

    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    ensure_dagster_home(dagster_home)
    definitions = defs()
    job = definitions.resolve_implicit_global_asset_job_def()
    graph = definitions.resolve_asset_graph()
    runs = _RunLog(check_severities(graph))
    with dg.DagsterInstance.get() as instance:
        sources = [k for k in graph.get_all_asset_keys() if graph.get(k).group_name == SOURCES]
        runs.add(job.execute_in_process(asset_selection=sources, instance=instance, run_config=QUIET,
                                        raise_on_error=False))

        sensor = definitions.resolve_sensor_def(SENSOR_NAME)
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=definitions.resources))
        log(f"{SENSOR_NAME}: {len(tick.run_requests or [])} run request(s) {tick.skip_message or ''}".rstrip())
        for request in tick.run_requests or []:
            tags = {**request.tags, "dagster/sensor_name": SENSOR_NAME, "dagster/run_key": request.run_key}
            runs.add(job.execute_in_process(asset_selection=request.asset_selection, instance=instance,
                                            tags=tags, run_config=QUIET, raise_on_error=False))

        modelling = [LOAN_FEATURES, LOAN_SNAPSHOTS, LOAN_OUTCOMES, PD_MODEL, PD_SCORES]
        rest = [
            k for k in graph.get_all_asset_keys()
            if graph.get(k).is_executable and graph.get(k).group_name not in (SOURCES, RAW, MARTS)
            and k not in modelling
        ]
        if rest:
            runs.add(job.execute_in_process(asset_selection=rest, instance=instance, run_config=QUIET,
                                            raise_on_error=False))
        # Every month the servicing data has passed, in one run (the assets' single-run backfill policy): the
        # features and snapshots, the outcomes known so far, the model trained on them, and the champion's scores.
        months = known_cutoff_partitions(LakeResource(), cutoff_partitions())
        log(f"features, PD model and scores for {len(months)} monthly cutoffs"
            + (f" ({months[0]}..{months[-1]})" if months else ""))
        if months:
            runs.add(job.execute_in_process(
                asset_selection=modelling, instance=instance, run_config=QUIET, raise_on_error=False,
                tags={"dagster/asset_partition_range_start": months[0],
                      "dagster/asset_partition_range_end": months[-1]}))
        model = model_figures(instance)
        # The marts last: they read the features and the champion's scores.
        marts = [k for k in graph.get_all_asset_keys() if graph.get(k).group_name == MARTS]
        log(f"dbt marts: {len(marts)} models and their tests")
        runs.add(job.execute_in_process(asset_selection=marts, instance=instance, run_config=QUIET,
                                        raise_on_error=False))
        # What the monitoring schedule evaluates between runs: Kafka lag, the dead-letter table's model.
        runs.add(definitions.resolve_job_def(MONITORING_JOB).execute_in_process(
            instance=instance, run_config=QUIET, raise_on_error=False))
    return {**runs.as_dict(), "model": model}


MODEL_FIGURES = ("model_version", "alias", "decision", "family", "auc", "gini", "ks", "brier", "log_loss",
                 "oracle_auc", "auc_over_oracle", "cv_auc", "train_rows", "test_rows", "train_cutoffs", "test_cutoffs",
                 "fit_seconds", "mlflow_run", "mlflow_model")


def model_figures(instance) -> dict:
    """The registered PD model's version, decision and metrics (beside the oracle's AUC), the rows of features and
    scores, from the latest materializations."""
    from cardo_pipeline.defs.features.loans import LOAN_FEATURES, LOAN_OUTCOMES
    from cardo_pipeline.defs.models.pd import PD_MODEL, PD_SCORES

    def latest(key) -> dict:
        event = instance.get_latest_materialization_event(key)
        return {k: v.value for k, v in event.asset_materialization.metadata.items()} if event else {}

    model = latest(PD_MODEL)
    figures = {name: model[name] for name in MODEL_FIGURES if name in model}
    figures["feature_rows"] = latest(LOAN_FEATURES).get("dagster/row_count")
    figures["outcome_rows"] = latest(LOAN_OUTCOMES).get("dagster/row_count")
    scores = latest(PD_SCORES)
    figures |= {"scored_rows": scores.get("dagster/row_count"), "mean_pd": scores.get("mean_pd"),
                "max_psi": scores.get("max_psi"), "scored_by_version": scores.get("model_version")}
    return figures


def check_severities(graph) -> dict[str, str]:
    """The severity a check reports with: said in its metadata (the Pandera checks), else ERROR for a blocking
    check and WARN for the others (what Dagster's freshness checks and ours report)."""
    severities = {}
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        stated = (spec.metadata or {}).get("severity")
        stated = getattr(stated, "value", stated)
        severities[f"{key.asset_key.to_user_string()}:{key.name}"] = stated or ("ERROR" if spec.blocking else "WARN")
    return severities


def raw_figures(settings: CardoSettings) -> dict:
    """Rows, committed offsets and dead letters of the raw layer, and its reconciliation with Kafka."""
    from cardo_pipeline.ingest.audit import dead_letters_by_topic
    from cardo_pipeline.ingest.delta_log import OffsetTrackedTable

    ends = topic_message_counts(settings)
    dead = dead_letters_by_topic(settings.lake_table(DEAD_LETTER_PATH))
    figures: dict = {"raw_rows": {}, "kafka_offsets_consumed": {}, "dead_lettered": sum(dead.values()),
                     "reconciliation": {}}
    for table in SOURCE_TABLES:
        topic = settings.topic(table.name)
        raw = OffsetTrackedTable(settings.lake_table(table.layout.raw))
        committed = raw.next_offsets(topic, sorted(ends[topic]))
        rows = raw.row_count()
        messages = sum(ends[topic].values())
        figures["raw_rows"][table.name] = rows
        figures["kafka_offsets_consumed"][topic] = {str(p): o for p, o in committed.items()}
        figures["reconciliation"][f"kafka_vs_raw:{table.name}"] = {
            "kafka_messages": messages, "raw_rows": rows, "dead_lettered": dead.get(topic, 0),
            "passed": messages == rows + dead.get(topic, 0),
        }
    return figures


def curated_figures(settings: CardoSettings) -> dict:
    """Rows of the curated and Iceberg tables, and the curated current state reconciled with Postgres row by row
    (every column: the whole path Postgres -> Debezium -> Kafka -> raw -> curated must give the source back)."""

    from cardo_pipeline.curate.merge_on_read import read_live
    from cardo_pipeline.defs.resources import IcebergResource

    figures: dict = {"curated_rows": {}, "iceberg_rows": {}, "reconciliation": {}}
    iceberg = IcebergResource()
    catalog = iceberg.catalog()
    with psycopg.connect(settings.pg_dsn) as conn:
        for table in SOURCE_TABLES:
            names = table.column_names
            curated = read_live(settings.lake_table(table.layout.curated), columns=names)
            if curated is None:
                continue
            figures["curated_rows"][table.name] = curated.height
            if catalog.table_exists(iceberg.identifier(table.name)):
                figures["iceberg_rows"][table.name] = catalog.load_table(
                    iceberg.identifier(table.name)).scan().to_arrow().num_rows
            columns = ", ".join(f'"{name}"' for name in names)
            source = {row for row in conn.execute(f'SELECT {columns} FROM public."{table.name}"').fetchall()}
            mine = {tuple(row[n] for n in names) for row in curated.to_dicts()}
            figures["reconciliation"][f"postgres_vs_curated:{table.name}"] = {
                "postgres_rows": len(source), "curated_rows": curated.height,
                "only_in_postgres": len(source - mine), "only_in_curated": len(mine - source),
                "passed": source == mine and curated.height == len(source),
            }
    return figures


def geo_figures(settings: CardoSettings) -> dict:
    """TERCET postcodes per country, and how the book's borrowers and collaterals matched their regions."""
    from cardo_pipeline.defs.features.geo import GEO_ENRICHED
    from cardo_pipeline.defs.keys import reference_key
    from cardo_pipeline.ingest.delta_log import load_table

    figures: dict = {}
    postcodes = settings.lake_table(reference_key("postcode_nuts3").path)
    if load_table(postcodes) is not None:
        counts = pl.scan_delta(postcodes).group_by("country_code").len().sort("country_code").collect()
        figures["postcodes_per_country"] = dict(counts.iter_rows())
    for spec in GEO_ENRICHED:
        uri = settings.lake_table(spec.key.path)
        if load_table(uri) is None:
            continue
        frame = pl.read_delta(uri, columns=["country_code", "nuts3_code"])
        by_country = frame.group_by("country_code").agg(pl.len().alias("rows"), pl.col("nuts3_code").is_not_null()
                                                        .mean().round(5).alias("match_rate")).sort("country_code")
        figures[spec.name] = {"rows": frame.height,
                              "match_rate": round(frame["nuts3_code"].is_not_null().mean() or 0.0, 5),
                              "by_country": {r["country_code"]: {"rows": r["rows"], "match_rate": r["match_rate"]}
                                             for r in by_country.to_dicts()}}
    return figures


def mart_figures(settings: CardoSettings) -> dict:
    """The dbt models' rows, and the newest cutoff's portfolio KPIs, from the marts' DuckDB file."""
    from cardo_pipeline.defs.resources import MartsResource
    from cardo_pipeline.marts.duckdb import connect
    from cardo_pipeline.marts.plots import row_counts, tables

    database = MartsResource().database_path()
    if not database.exists():
        return {}
    with connect(database, read_only=True) as conn:
        rows = row_counts(conn, tables(conn))
        latest = conn.sql("select * from portfolio_kpis order by cutoff_date desc limit 1").pl() \
            if "portfolio_kpis" in rows else pl.DataFrame()
    kpis = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in latest.row(0, named=True).items()} \
        if latest.height else {}
    return {"database": str(database), "rows": rows, "latest_portfolio_kpis": kpis}


def run_demo(options: DemoOptions, log=print) -> DemoResult:
    settings = CardoSettings.from_env()
    started = time.monotonic()
    Stack(settings).up(log=log)

    rows_before = source_row_counts(settings)
    simulation = None
    if rows_before["loans"] == 0:
        from cardo_pipeline.simulator import simulate
        from cardo_pipeline.simulator.postgres_sink import PostgresSink

        log(
            f"simulating {options.loans} loans over {options.months} months (seed {options.seed}) into Postgres"
        )
        with PostgresSink(settings.pg_dsn) as sink:
            summary = simulate(sink, loans=options.loans, months=options.months, seed=options.seed)
        simulation = summary.as_dict()
    else:
        log(
            f"servicing already holds {rows_before['loans']} loans: not simulating again "
            "(`make clean` starts over)"
        )

    # Every row change is one message, and every delete is followed by a tombstone.
    expected = 0 if simulation is None else simulation["total_changes"] + simulation["deletes"]
    log("waiting for Debezium to publish every change to Kafka")
    messages = wait_for_capture(settings, expected, options.capture_timeout_s, log)

    log("running the asset graph through Dagster")
    dagster_result = run_asset_graph(settings, log)

    summary = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cardo_home": str(settings.home),
        "simulation": simulation,
        "source_rows": source_row_counts(settings),
        "kafka_end_offsets": {
            topic: {str(p): o for p, o in parts.items()}
            for topic, parts in topic_message_counts(settings).items()
        },
        "kafka_messages": messages,
        **dagster_result,
        **raw_figures(settings),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    curated = curated_figures(settings)
    summary["reconciliation"].update(curated.pop("reconciliation"))
    summary.update(curated)
    summary["geo"] = geo_figures(settings)
    summary["marts"] = mart_figures(settings)
    path = settings.home / "demo-summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return DemoResult(summary=summary, path=path)


def checks_by_severity(checks: list[dict]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for check in checks:
        counts.setdefault(check["severity"], {"passed": 0, "failed": 0, "skipped": 0})[check["result"]] += 1
    return dict(sorted(counts.items()))


def _model_line(model: dict) -> str:
    if "model_version" not in model:
        return "  PD model       : not trained"
    oracle = f", oracle AUC {model['oracle_auc']:.4f} (ratio {model['auc_over_oracle']:.3f})" \
        if "oracle_auc" in model else ""
    return (f"  PD model       : cardo_pd v{model['model_version']} ({model['alias']}, {model['family']}): out-of-time "
            f"AUC {model['auc']:.4f}, Gini {model['gini']:.4f}, KS {model['ks']:.4f}, Brier {model['brier']:.4f}"
            f"{oracle}; {model.get('scored_rows') or 0:,} scores\n"
            f"                   {model.get('mlflow_run', '')}")


def _marts_line(marts: dict) -> str:
    rows = marts.get("rows") or {}
    if not rows:
        return "  dbt marts      : not built"
    kpis = marts.get("latest_portfolio_kpis") or {}
    line = "  dbt marts      : " + ", ".join(f"{name} {count:,}" for name, count in rows.items()
                                          if not name.startswith("stg_"))
    if kpis:
        late = sum(kpis[f"dpd_{bucket}_balance"] for bucket in ("30_59", "60_89", "90_plus"))
        line += (f"\n                   {kpis['cutoff_date']}: {kpis['loans_outstanding']:,} loans, balance "
                 f"{kpis['balance_outstanding']:,.0f}, WA rate {kpis['wa_interest_rate']:.2%}, 30+ dpd "
                 f"{late / kpis['balance_outstanding']:.2%}, NPL ratio {kpis['npl_ratio'] or 0:.2%}, CPR 12m "
                 f"{kpis['cpr_12m'] or 0:.2%}, CDR 12m {kpis['cdr_12m'] or 0:.2%}, expected loss "
                 f"{kpis['expected_loss'] or 0:,.0f}")
    return line


def human_summary(result: DemoResult) -> str:
    s = result.summary
    rows = ", ".join(f"{k} {v:,}" for k, v in s["source_rows"].items())
    lines = [
        "",
        f"Demo {'succeeded' if s['success'] else 'FAILED'} in {s['wall_seconds']} s "
        f"({len(s['run_ids'])} Dagster runs).",
        f"  servicing rows : {rows}",
        f"  Kafka messages : {s['kafka_messages']:,} captured by Debezium",
        "  raw rows       : " + ", ".join(f"{k} {v:,}" for k, v in s["raw_rows"].items())
        + f" ({s['dead_lettered']} dead-lettered)",
        f"  assets         : {len(s['assets_materialized'])} materialized, {len(s['assets_observed'])} observed, "
        f"{len(s['assets_failed'])} failed",
        "  asset checks   : " + "; ".join(
            f"{severity} {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
            for severity, counts in checks_by_severity(s["asset_checks"]).items()),
        "  curated rows   : " + ", ".join(f"{k} {v:,}" for k, v in s.get("curated_rows", {}).items())
        + " (Iceberg: " + ", ".join(f"{k} {v:,}" for k, v in s.get("iceberg_rows", {}).items()) + ")",
        "  geo            : " + ", ".join(
            f"{name} {figures['match_rate']:.2%} matched" for name, figures in s.get("geo", {}).items()
            if isinstance(figures, dict) and "match_rate" in figures)
        + f" ({sum(s.get('geo', {}).get('postcodes_per_country', {}).values()):,} TERCET postcodes)",
        _model_line(s.get("model") or {}),
        _marts_line(s.get("marts") or {}),
        f"  reconciliation : {sum(r['passed'] for r in s['reconciliation'].values())} of "
        f"{len(s['reconciliation'])} passed (Kafka vs raw, Postgres vs curated, row by row)",
        f"  summary        : {result.path}",
        "",
        "Open the Dagster UI: make dev, then http://127.0.0.1:3000 (the demo's runs are in its Runs tab).",
        "Stop the services:  .venv/bin/cardo stack down",
    ]
    return "\n".join(lines)
