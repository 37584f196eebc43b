"""The `cardo` console script: everything that is not Dagster itself (the local stack, the simulator, benchmarks).

Each subcommand is a thin shell over library code; errors the user can act on are printed as one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from cardo_pipeline.settings import CardoSettings, ConfigError
from cardo_pipeline.stack import Stack, StackError


def _stack(args: argparse.Namespace) -> int:
    stack = Stack(CardoSettings.from_env())
    if args.action == "up":
        stack.up(spark=args.spark)
    elif args.action == "down":
        stack.down()
    else:
        statuses = stack.status(spark=True if args.spark else None)
        if args.json:
            print(json.dumps([s.__dict__ for s in statuses]))
        for s in statuses:
            state = "healthy" if s.healthy else ("running, not healthy" if s.running else "stopped")
            print(f"{s.name:<12} {state:<22} {s.endpoint:<24} {s.detail}")
        return 0 if all(s.healthy for s in statuses) else 1
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from cardo_pipeline.simulator import simulate

    settings = CardoSettings.from_env()
    if args.sink == "kafka":
        # Bulk mode: the envelopes Debezium would publish, produced straight to Kafka (millions of events).
        from cardo_pipeline.simulator.kafka_sink import KafkaEnvelopeSink

        sink = KafkaEnvelopeSink(settings.kafka_bootstrap, args.topic_prefix or settings.topic_prefix)
    else:
        from cardo_pipeline.simulator.postgres_sink import PostgresSink

        sink = PostgresSink(settings.pg_dsn)
    started = time.monotonic()
    with sink:
        summary = simulate(sink, loans=args.loans, months=args.months, seed=args.seed)
    result = {**summary.as_dict(), "seconds": round(time.monotonic() - started, 2)}
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cardo_pipeline.demo import DemoOptions, human_summary, run_demo

    result = run_demo(DemoOptions(loans=args.loans, months=args.months, seed=args.seed))
    print(human_summary(result))
    return 0 if result.summary["success"] else 1


def _replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cardo_pipeline.curate.storage import CuratedLocations, CuratedStore, current_schema
    from cardo_pipeline.ingest.replay import replay_file
    from cardo_pipeline.mirror.iceberg import IcebergMirror, sql_catalog
    from cardo_pipeline.tables import SOURCE_TABLES

    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"FILE {path} does not exist")
    lake = Path(args.lake) if args.lake else CardoSettings.from_env().lake_dir
    report = replay_file(path, lake)
    # All the way to curated and Iceberg, as the assets would; the Iceberg catalog lives beside the lake's tables.
    catalog = sql_catalog(f"sqlite:///{lake.absolute()}/iceberg/catalog.db", lake / "iceberg" / "warehouse")
    curated, iceberg = {}, {}
    for table in SOURCE_TABLES:
        locations = CuratedLocations.in_lake(str(lake), table)
        applied = CuratedStore(table, locations).apply()
        if applied.raw_version is None:
            continue
        curated[table.name] = {"events_applied": applied.events, "raw_version": applied.raw_version,
                               "inserted": applied.inserted, "updated": applied.updated, "deleted": applied.deleted}
        mirrored = IcebergMirror(catalog, f"curated.{table.name}", locations.current, table,
                                 current_schema(table)).sync()
        iceberg[table.name] = {"table": mirrored.identifier, "rows": mirrored.rows,
                               "delta_version": mirrored.delta_version, "keys_changed": mirrored.keys_changed}
    print(json.dumps({"file": str(path), "lake": str(lake), **report.__dict__, "curated": curated,
                      "iceberg": iceberg}))
    return 0


def _ingest(args: argparse.Namespace) -> int:
    """Land new Kafka messages in the raw tables without Dagster (what the raw assets run)."""
    from cardo_pipeline.ingest.partition_workers import TopicIngest, ingest_topics
    from cardo_pipeline.ingest.raw_ingest import DEFAULT_BATCH_MESSAGES
    from cardo_pipeline.tables import DEAD_LETTER_PATH, SOURCE_TABLES, TABLES_BY_NAME

    settings = CardoSettings.from_env()
    unknown = sorted(set(args.table) - set(TABLES_BY_NAME))
    if unknown:
        raise ConfigError(f"--table {unknown[0]!r} is not a source table; choose from {sorted(TABLES_BY_NAME)}")
    tables = [TABLES_BY_NAME[name] for name in args.table] or list(SOURCE_TABLES)
    jobs = [TopicIngest(table, settings.topic(table.name), settings.lake_table(table.layout.raw),
                        settings.lake_table(DEAD_LETTER_PATH)) for table in tables]
    result = ingest_topics(settings.kafka_bootstrap, jobs, workers=args.workers,
                           max_batch_messages=args.batch or DEFAULT_BATCH_MESSAGES)
    for report in result.reports.values():
        print(json.dumps({**report.__dict__, "ingest_workers": result.workers}))
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.workload == "ingest":
        from cardo_pipeline.bench.ingest import bench_ingest

        log = (lambda _: None) if args.json else print
        result = bench_ingest(args.events, seed=args.seed, log=log, workers=args.workers, engine=args.engine,
                              **({"batch": args.batch} if args.batch else {}))
    elif args.workload == "apply":
        from cardo_pipeline.bench.apply import bench_apply

        result = bench_apply(args.rows, args.changes, seed=args.seed, log=(lambda _: None) if args.json else print,
                             engine=args.engine)
    elif args.workload == "checks":
        from cardo_pipeline.bench.checks import bench_checks

        result = bench_checks(args.rows, args.changes, seed=args.seed, chunk_rows=args.chunk_rows,
                              log=(lambda _: None) if args.json else print)
    elif args.workload == "model":
        from cardo_pipeline.bench.model import bench_model

        result = bench_model(args.loans, args.months, args.cutoffs, seed=args.seed,
                             log=(lambda _: None) if args.json else print)
    elif args.workload == "freshness":
        from cardo_pipeline.bench.freshness import FreshnessError, bench_freshness

        try:
            result = bench_freshness(args.changes_committed, log=(lambda _: None) if args.json else print)
        except FreshnessError as exc:
            print(f"cardo bench freshness: {exc}", file=sys.stderr)
            return 1
    else:
        from cardo_pipeline.bench.decode import bench_decode

        result = bench_decode(args.events)
    print(json.dumps(result))
    return 0


def _model(args: argparse.Namespace) -> int:
    """Evaluate the PD recipe on a labelled CSV (nested cross-validation); prints the out-of-fold metrics."""
    from cardo_pipeline.model.evaluate import EvaluationInputError, evaluate_csv

    try:
        result = evaluate_csv(args.csv, args.target, folds=args.folds, random_state=args.seed,
                              positive=args.positive)
    except EvaluationInputError as exc:
        raise ConfigError(str(exc)) from exc
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("auc", "gini", "ks", "brier", "log_loss", "rows", "positives", "default_rate", "folds",
                    "chosen_family", "dropped", "seconds"):
            print(f"{key}: {result[key]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cardo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="start, stop or check the local Postgres, Kafka, Debezium and MLflow")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--json", action="store_true", help="status as JSON")
    stack.add_argument("--spark", action="store_true",
                       help="up: also a Spark standalone master and worker on 127.0.0.1 (CARDO_SPARK_MASTER_PORT); "
                            "status: report them even when not started (down always stops them)")
    stack.set_defaults(func=_stack)

    sim = sub.add_parser("simulate", help="drive the servicing database with a simulated loan book")
    sim.add_argument("--loans", type=int, default=2000)
    sim.add_argument("--months", type=int, default=24)
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument(
        "--sink",
        choices=["postgres", "kafka"],
        default="postgres",
        help="postgres: real transactions captured by Debezium; kafka: bulk mode, envelopes "
        "produced straight to Kafka",
    )
    sim.add_argument(
        "--topic-prefix", help="bulk mode topic prefix (default: the Debezium prefix, servicing)"
    )
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(func=_simulate)

    replay = sub.add_parser(
        "replay", help="apply a file of Debezium messages (one value per line) to the raw, curated and Iceberg tables")
    replay.add_argument("file")
    replay.add_argument("--lake", help="lake folder (default: $CARDO_HOME/lake)")
    replay.set_defaults(func=_replay)

    ingest = sub.add_parser("ingest", help="land new Kafka messages in the raw tables without Dagster")
    ingest.add_argument("--table", action="append", default=[], help="a source table (repeatable; default: all)")
    ingest.add_argument("--batch", type=int, help="messages per batch, one Delta commit each (default 10,000)")
    ingest.add_argument("--workers", type=int,
                        help="worker processes for a backlog of 100k messages or more (default: cores + 1)")
    ingest.set_defaults(func=_ingest)

    bench = sub.add_parser("bench", help="benchmarks; each prints one JSON line")
    bench.add_argument("workload", choices=["ingest", "decode", "apply", "freshness", "checks", "model"])
    bench.add_argument("--loans", type=int, default=100_000, help="model: loans in the simulated book")
    bench.add_argument("--months", type=int, default=37, help="model: months simulated")
    bench.add_argument("--cutoffs", type=int, default=24, help="model: labelled monthly cutoffs trained and tested on")
    bench.add_argument("--rows", type=int, default=10_000_000, help="apply, checks: loans in the curated table")
    bench.add_argument("--changes", type=int, default=200_000, help="apply, checks: change events applied")
    bench.add_argument("--chunk-rows", type=int, default=200_000, help="checks: rows validated at a time")
    bench.add_argument("--events", type=int, default=1_000_000)
    bench.add_argument("--changes-committed", type=int, default=20,
                       help="freshness: single changes committed in Postgres, one after the other")
    bench.add_argument("--seed", type=int, default=42)
    bench.add_argument("--batch", type=int, help="messages per raw commit (default 10,000)")
    bench.add_argument("--workers", type=int, help="ingest worker processes (default: one more than the cores)")
    bench.add_argument("--engine", choices=["local", "spark"], default="local",
                       help="apply, ingest: spark also runs the Spark engine on the same data, beside the local one")
    bench.add_argument("--json", action="store_true", help="print only the JSON line")
    bench.set_defaults(func=_bench)

    demo = sub.add_parser(
        "demo", help="stack up, simulate a book, run every asset through Dagster, write a summary"
    )
    demo.add_argument("--loans", type=int, default=2000)
    demo.add_argument("--months", type=int, default=24)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=_demo)

    model = sub.add_parser("model", help="the probability-of-default recipe outside Dagster")
    model.add_argument("action", choices=["evaluate"],
                       help="evaluate: nested cross-validation of the recipe on a labelled CSV")
    model.add_argument("--csv", required=True, help="a labelled loan table, one row per loan")
    model.add_argument("--target", required=True, help="the outcome column (0/1, booleans, or two labels)")
    model.add_argument("--positive", help="the target value that means default, when it cannot be told "
                       "(1 of 0/1, bad, default, yes and true are recognised)")
    model.add_argument("--folds", type=int, default=5, help="outer cross-validation folds")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--json", action="store_true", help="print only one JSON line")
    model.set_defaults(func=_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StackError, ConfigError) as exc:
        print(f"cardo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
