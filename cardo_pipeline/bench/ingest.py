"""`cardo bench ingest`: realistic Debezium events (bulk mode) into fresh topics, then, in the same run,
consume-only throughput (poll and discard) and the full ingest into raw Delta, one JSON line.

Events are produced by a child process and consume-only runs in another, so the peak RSS reported is the
ingest's own (consume-only's is reported beside it). The ingest is the one the raw assets run
(`ingest_topics`): with a backlog this large its partitions go to worker processes, so `peak_rss_mb` is the
peak of this process and its workers together, sampled, shared library pages counted once (`PeakTreeRss`;
`peak_rss_sum_mb` counts them once per process).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from cardo_pipeline.bench.memory import PeakTreeRss
from cardo_pipeline.ingest.kafka_reader import consumer_config
from cardo_pipeline.ingest.partition_workers import TopicIngest, default_workers, ingest_topics
from cardo_pipeline.ingest.raw_ingest import DEFAULT_BATCH_MESSAGES
from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.stack import Stack
from cardo_pipeline.tables import DEAD_LETTER_PATH, SOURCE_TABLES, lake_uri

EVENTS_PER_LOAN_24_MONTHS = 89  # measured on the simulator: originations, schedules, servicing, deletes


def produce_events(settings: CardoSettings, prefix: str, events: int, seed: int) -> None:
    loans = max(1, math.ceil(events / EVENTS_PER_LOAN_24_MONTHS))
    env = {"CARDO_KAFKA_PORT": str(settings.kafka_port)}
    subprocess.run(
        [sys.executable, "-m", "cardo_pipeline.cli", "simulate", "--sink", "kafka", "--topic-prefix", prefix,
         "--loans", str(loans), "--months", "24", "--seed", str(seed), "--json"],
        check=True, capture_output=True, env={**os.environ, **env},
    )


def consume_only(bootstrap: str, topics: list[str]) -> tuple[int, int, float, int]:
    """(messages, bytes, seconds, peak RSS in MB) to poll every message of the topics and discard it; run in a
    child process (`consume_only_in_child`) so its memory is not counted as the ingest's."""
    ends = end_offsets(bootstrap, topics)
    consumer = Consumer(consumer_config(bootstrap))
    assignment = [TopicPartition(t, p, 0) for t in topics for p, end in ends[t].items() if end > 0]
    target = sum(sum(e.values()) for e in ends.values())
    consumer.assign(assignment)
    messages = size = 0
    started = time.perf_counter()
    while messages < target:
        for m in consumer.consume(num_messages=min(10_000, target - messages), timeout=1.0):  # see read_batches
            if m.error() is None:
                messages += 1
                size += len(m.value() or b"") + len(m.key() or b"")
    seconds = time.perf_counter() - started
    consumer.close()
    return messages, size, seconds, round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def consume_only_in_child(bootstrap: str, topics: list[str]) -> tuple[int, int, float, int]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(consume_only, (bootstrap, topics))


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Each run produces its own topics (~0.4 GB on disk per million events): they go when it ends."""
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept until the futures resolve: its end fails them
    futures = admin.delete_topics(topics, operation_timeout=30)
    for future in futures.values():
        try:
            future.result(timeout=60)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:  # never produced: nothing to delete
                raise


def spark_ingest(bootstrap: str, jobs: list[TopicIngest]) -> tuple[int, float, float]:
    """(messages landed or dead-lettered, seconds, session start seconds) of the Spark engine's ingest of the
    jobs' topics; the session starts before the clock."""
    from cardo_pipeline.spark.ingest import ingest_topic_with_spark
    from cardo_pipeline.spark.session import spark_session

    started = time.perf_counter()
    spark = spark_session()
    session_seconds = time.perf_counter() - started
    os.sync()
    started = time.perf_counter()
    landed = 0
    for job in jobs:
        report = ingest_topic_with_spark(spark, bootstrap, job.table, job.topic, job.raw_uri, job.dead_letter_uri)
        landed += report.landed + report.dead_lettered
    return landed, time.perf_counter() - started, session_seconds


def same_raw_rows(local: list[TopicIngest], spark: list[TopicIngest]) -> bool:
    """Both engines landed the same messages with the same decoded rows (ingestion times aside)."""
    import polars as pl

    ignored = {"ingested_at"}
    for mine, theirs in zip(local, spark, strict=True):
        a, b = pl.read_delta(mine.raw_uri), pl.read_delta(theirs.raw_uri)
        columns = [c for c in a.columns if c not in ignored]
        if set(columns) != {c for c in b.columns if c not in ignored}:
            return False
        order = ["partition", "offset"]
        if not a.select(columns).sort(order).equals(b.select(columns).sort(order)):
            return False
    return True


def bench_ingest(events: int, seed: int = 42, batch: int = DEFAULT_BATCH_MESSAGES, workers: int | None = None,
                 log=print, engine: str = "local") -> dict:
    workers = default_workers() if workers is None else workers
    settings = CardoSettings.from_env()
    stack = Stack(settings)
    if not all(s.healthy for s in stack.status()):
        stack.up(log=lambda _: None)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    topics = [t.topic(prefix) for t in SOURCE_TABLES]
    log(f"producing {events:,} events to {prefix}.public.*")
    lake = Path(tempfile.mkdtemp(prefix="cardo-bench-lake-"))
    try:
        produce_events(settings, prefix, events, seed)
        os.sync()  # the broker's freshly written segments go to disk now, not during the measurements
        messages, size, consume_seconds, consume_rss_mb = consume_only_in_child(settings.kafka_bootstrap, topics)
        jobs = [TopicIngest(table, table.topic(prefix), lake_uri(str(lake), table.layout.raw),
                            lake_uri(str(lake), DEAD_LETTER_PATH)) for table in SOURCE_TABLES]
        started = time.perf_counter()
        with PeakTreeRss() as ingest_rss:
            result = ingest_topics(settings.kafka_bootstrap, jobs, workers=workers, max_batch_messages=batch)
        ingest_seconds = time.perf_counter() - started
        landed = sum(r.landed + r.dead_lettered for r in result.reports.values())
        spark_figures = {}
        if engine == "spark":
            log("ingesting the same topics with Spark")
            spark_jobs = [TopicIngest(job.table, job.topic, lake_uri(str(lake / "spark"), job.table.layout.raw),
                                      lake_uri(str(lake / "spark"), DEAD_LETTER_PATH)) for job in jobs]
            spark_landed, spark_seconds, session_seconds = spark_ingest(settings.kafka_bootstrap, spark_jobs)
            spark_figures = {
                "spark_ingest_events_per_s": round(spark_landed / spark_seconds),
                "spark_ingest_seconds": round(spark_seconds, 2),
                "spark_session_start_seconds": round(session_seconds, 1),
                "spark_over_local": round(ingest_seconds / spark_seconds, 3),
                "verified": spark_landed == messages and landed == messages and same_raw_rows(jobs, spark_jobs),
            }
    finally:
        shutil.rmtree(lake, ignore_errors=True)
        delete_topics(settings.kafka_bootstrap, topics)
    if landed != messages:
        raise AssertionError(f"ingested {landed} of {messages} messages")
    consume_rate = messages / consume_seconds
    ingest_rate = messages / ingest_seconds
    return {
        "benchmark": "ingest",
        "engine": engine,
        "events": messages,
        "mean_message_bytes": round(size / messages),
        "consume_only_events_per_s": round(consume_rate),
        "ingest_events_per_s": round(ingest_rate),
        "ratio": round(ingest_rate / consume_rate, 3),
        "peak_rss_mb": ingest_rss.mb,  # the ingest's processes together, shared pages once (see PeakTreeRss)
        "peak_rss_sum_mb": ingest_rss.rss_sum_mb,  # the same, each process's shared pages counted again
        "consume_only_peak_rss_mb": consume_rss_mb,
        "batch_messages": batch,
        "ingest_workers": result.workers,
        "ingest_seconds": round(ingest_seconds, 2),
        **({"verified": landed == messages} if engine == "local" else spark_figures),
    }
