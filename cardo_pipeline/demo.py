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

import psycopg

from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.stack import Stack
from cardo_pipeline.tables import SOURCE_TABLES


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


def run_asset_graph(settings: CardoSettings) -> dict:
    """Run the demo job through Dagster against a persistent instance, so the runs show up in `make dev`."""
    import dagster as dg

    from cardo_pipeline.definitions import DEMO_JOB, defs

    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    definitions = defs()
    with dg.DagsterInstance.get() as instance:
        result = definitions.resolve_job_def(DEMO_JOB).execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        materialized = sorted(
            {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        )
        observed = sorted({e.asset_key.to_user_string() for e in result.get_asset_observation_events()})
        failed_steps = sorted(e.step_key for e in result.all_events if e.is_step_failure)
        checks = [
            e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        return {
            "run_id": result.run_id,
            "success": result.success,
            "assets_materialized": materialized,
            "assets_observed": observed,
            "assets_failed": failed_steps,
            "asset_checks_passed": sorted(c.check_name for c in checks if c.passed),
            "asset_checks_failed": sorted(c.check_name for c in checks if not c.passed),
        }


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
    dagster_result = run_asset_graph(settings)

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
        **{k: v for k, v in dagster_result.items()},
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    path = settings.home / "demo-summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return DemoResult(summary=summary, path=path)


def human_summary(result: DemoResult) -> str:
    s = result.summary
    rows = ", ".join(f"{k} {v:,}" for k, v in s["source_rows"].items())
    lines = [
        "",
        f"Demo {'succeeded' if s['success'] else 'FAILED'} in {s['wall_seconds']} s (Dagster run {s['run_id']}).",
        f"  servicing rows : {rows}",
        f"  Kafka messages : {s['kafka_messages']:,} captured by Debezium",
        f"  assets         : {len(s['assets_materialized'])} materialized, {len(s['assets_observed'])} observed, "
        f"{len(s['assets_failed'])} failed",
        f"  asset checks   : {len(s['asset_checks_passed'])} passed, {len(s['asset_checks_failed'])} failed",
        f"  summary        : {result.path}",
        "",
        "Open the Dagster UI: make dev, then http://127.0.0.1:3000 (the demo's runs are in its Runs tab).",
        "Stop the services:  .venv/bin/cardo stack down",
    ]
    return "\n".join(lines)
