"""Raw ingestion on Spark (`spark.ingest.ingest_topic_with_spark`) against the real local Kafka: the same rows, dead
letters and offsets as the local path, exactly the requested range, exactly once across a SIGKILL, and tables that
either path continues."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from confluent_kafka import Producer
from deltalake import DeltaTable

from cardo_pipeline.curate.apply import RAW_COLUMNS
from cardo_pipeline.curate.storage import raw_increments
from cardo_pipeline.ingest.delta_log import _NEW_TABLE_CONFIGURATION, OffsetTrackedTable
from cardo_pipeline.ingest.raw_ingest import ingest_topic
from cardo_pipeline.kafka_topics import end_offsets
from cardo_pipeline.spark.ingest import ingest_topic_with_spark
from cardo_pipeline.tables import TABLES_BY_NAME
from cardo_pipeline_tests.raw_helpers import audit_topic, encode_changes, fresh_prefix, loan_row, produce_book

pytestmark = [pytest.mark.stack, pytest.mark.spark]
BAD = [b"{this is not json", b'{"schema": {"type": "struct"}}', b"\xff\xfe not even text"]
SORT = [("partition", "ascending"), ("offset", "ascending")]


class Book:
    def __init__(self, bootstrap: str, prefix: str):
        self.bootstrap, self.prefix = bootstrap, prefix

    def topic(self, table: str) -> str:
        return f"{self.prefix}.public.{table}"

    def ends(self, table: str) -> dict[int, int]:
        return end_offsets(self.bootstrap, [self.topic(table)])[self.topic(table)]


@pytest.fixture(scope="module")
def book(kafka_bootstrap: str) -> Book:
    """A simulated book in the module's own topics (two partitions each), then unparseable messages at the end of
    both partitions of loans and borrowers, and a valid envelope after them."""
    prefix = fresh_prefix("spark")
    produce_book(kafka_bootstrap, prefix, loans=12, months=3, seed=5)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for table in ("loans", "borrowers"):
        for partition in (0, 1):
            for value in BAD:
                producer.produce(f"{prefix}.public.{table}", key=b'{"x":1}', value=value, partition=partition)
    for value in encode_changes(TABLES_BY_NAME["loans"], prefix, [loan_row(90_001)]):
        producer.produce(f"{prefix}.public.loans", key=b'{"loan_id":90001}', value=value, partition=1)
    assert producer.flush(30) == 0
    return Book(kafka_bootstrap, prefix)


def _python(book: Book, lake: Path, table: str, target_end: dict[int, int] | None = None, batch: int = 50_000):
    return ingest_topic(book.bootstrap, TABLES_BY_NAME[table], book.topic(table),
                        OffsetTrackedTable(f"{lake}/raw/{table}"), OffsetTrackedTable(f"{lake}/raw/_dead_letter"),
                        target_end=target_end, max_batch_messages=batch)


def _spark(spark, book: Book, lake: Path, table: str, **options):
    return ingest_topic_with_spark(spark, book.bootstrap, TABLES_BY_NAME[table], book.topic(table),
                                   f"{lake}/raw/{table}", f"{lake}/raw/_dead_letter", **options)


def _raw_rows(lake: Path, table: str) -> pa.Table:
    return DeltaTable(f"{lake}/raw/{table}").to_pyarrow_table().drop_columns(["ingested_at"]).sort_by(SORT)


def _dead_letters(lake: Path, topic: str) -> pa.Table:
    dead = DeltaTable(f"{lake}/raw/_dead_letter").to_pyarrow_table().drop_columns(["dead_lettered_at"])
    return dead.filter(pa.compute.equal(dead["topic"], topic)).sort_by(SORT)


def _offsets(lake: Path, table: str, topic: str, uri: str | None = None) -> dict[int, int]:
    return OffsetTrackedTable(uri or f"{lake}/raw/{table}").next_offsets(topic, [0, 1])


def _assert_once(lake: Path, table: str, topic: str, expected: int) -> None:
    audit, held = audit_topic(str(lake), table, topic)
    assert audit.passed, audit.samples
    assert held == expected


def _assert_delta_rs_can_write(uri: str) -> None:
    """Spark left the protocol delta-rs created (no feature it cannot write): a delta-rs append still works."""
    table = DeltaTable(uri)
    protocol = table.protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 4)
    assert not protocol.writer_features and not protocol.reader_features
    assert table.metadata().configuration == _NEW_TABLE_CONFIGURATION


def test_spark_and_python_land_the_same_rows_dead_letters_and_offsets(spark, book: Book, tmp_path: Path) -> None:
    local, on_spark = tmp_path / "local", tmp_path / "spark"
    for table in ("loans", "borrowers"):
        topic, ends = book.topic(table), book.ends(table)
        expected = _python(book, local, table, target_end=ends)
        report = _spark(spark, book, on_spark, table, target_end=ends)
        assert report.consumed == report.landed + report.dead_lettered == sum(ends.values())
        assert (report.consumed, report.landed, report.dead_lettered) == (
            expected.consumed, expected.landed, expected.dead_lettered)
        assert report.dead_lettered == 2 * len(BAD)
        assert report.committed_offsets == expected.committed_offsets == ends

        python_rows, spark_rows = _raw_rows(local, table), _raw_rows(on_spark, table)
        assert DeltaTable(f"{on_spark}/raw/{table}").schema() == DeltaTable(f"{local}/raw/{table}").schema()
        assert spark_rows.schema == python_rows.schema
        assert spark_rows.equals(python_rows)
        assert _dead_letters(on_spark, topic).equals(_dead_letters(local, topic))
        assert _offsets(on_spark, table, topic) == _offsets(local, table, topic) == ends
        raw_table = DeltaTable(f"{on_spark}/raw/{table}")
        assert {p: raw_table.transaction_version(f"kafka/{topic}/{p}") for p in ends} == ends
        _assert_once(on_spark, table, topic, sum(ends.values()))
        _assert_delta_rs_can_write(f"{on_spark}/raw/{table}")

        # the curated apply reads Spark's commits as it reads delta-rs's
        increments = list(raw_increments(raw_table, None, 1_000_000))
        applied = pa.concat_tables([rows.to_arrow() for rows, _ in increments]).sort_by([("offset", "ascending")])
        local_applied = pa.concat_tables(
            [rows.to_arrow() for rows, _ in raw_increments(DeltaTable(f"{local}/raw/{table}"), None, 1_000_000)]
        ).sort_by([("offset", "ascending")])
        assert applied.num_rows == report.landed and applied.column_names == RAW_COLUMNS
        assert sorted(applied.to_pylist(), key=repr) == sorted(local_applied.to_pylist(), key=repr)
    assert _offsets(on_spark, "", book.topic("loans"), f"{on_spark}/raw/_dead_letter") == book.ends("loans")


def test_exactly_the_requested_range_is_read_and_the_next_run_completes_it(
    spark, book: Book, tmp_path: Path
) -> None:
    table, topic, ends = "collaterals", book.topic("collaterals"), book.ends("collaterals")
    target = {p: end // 3 for p, end in ends.items()}
    first = _spark(spark, book, tmp_path, table, target_end=target)
    assert first.committed_offsets == target and first.consumed == sum(target.values())
    rows = DeltaTable(f"{tmp_path}/raw/{table}").to_pyarrow_table(columns=["partition", "offset"]).to_pylist()
    assert sorted((r["partition"], r["offset"]) for r in rows) == [(p, o) for p in (0, 1) for o in range(target[p])]

    rest = _spark(spark, book, tmp_path, table, max_batch_messages=10_000)  # up to the end offsets now
    assert rest.start_offsets == target and rest.committed_offsets == ends
    assert rest.consumed == sum(ends.values()) - sum(target.values())
    _assert_once(tmp_path, table, topic, sum(ends.values()))
    assert _python(book, tmp_path, table).consumed == 0  # nothing left for the local path either
    again = _spark(spark, book, tmp_path, table)
    assert (again.consumed, again.batches) == (0, 0)


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from cardo_pipeline.spark.session import spark_session
    from cardo_pipeline.spark.ingest import ingest_topic_with_spark
    from cardo_pipeline.tables import TABLES_BY_NAME

    bootstrap, table, topic, lake = sys.argv[1:5]
    commits = []

    def after_commit(commit):
        commits.append(commit)
        print(f"committed {commit.table} {commit.partition} {commit.next_offset}", flush=True)
        # killed right after the first dead letters a raw commit preceded: its partition's rows are not committed
        if commit.table == "dead_letter" and any(c.table == "raw" for c in commits):
            os.kill(os.getpid(), signal.SIGKILL)

    ingest_topic_with_spark(spark_session(), bootstrap, TABLES_BY_NAME[table], topic, f"{lake}/raw/{table}",
                            f"{lake}/raw/_dead_letter", max_batch_messages=int(sys.argv[5]), after_commit=after_commit)
""")


def _run_script(script: str, args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """(return code, stdout, stderr) of `python -c script args`, run in a process group of its own, so that the
    Spark JVM a killed driver started goes with it."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=480)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stdout, stderr


def _commits_until_killed(ends: dict[int, int], bad: dict[int, set[int]], batch: int) -> list[tuple[str, int, int]]:
    """The commits `_KILLED_RUN` makes, in order, up to the one it is killed after."""
    cursor, commits = dict.fromkeys(ends, 0), []
    while any(cursor[p] < end for p, end in ends.items()):
        for p in sorted(p for p in ends if cursor[p] < ends[p]):
            end = min(ends[p], cursor[p] + batch)
            if any(cursor[p] <= offset < end for offset in bad[p]):
                commits.append(("dead_letter", p, end))
                if any(kind == "raw" for kind, _, _ in commits):
                    return commits
            commits.append(("raw", p, end))
            cursor[p] = end
    return commits


@pytest.mark.timeout(600)
def test_a_spark_run_killed_between_commits_loses_and_doubles_nothing(
    spark, book: Book, tmp_path: Path, test_env: dict[str, str]
) -> None:
    table, topic, ends = "loans", book.topic("loans"), book.ends("loans")
    lake, local = tmp_path / "spark", tmp_path / "local"
    _python(book, local, table, target_end=ends)
    bad = {p: {d["offset"] for d in _dead_letters(local, topic).to_pylist() if d["partition"] == p} for p in ends}
    batch = min(ends.values()) - len(BAD) - 1  # the first round ends before the dead letters at the partitions' ends
    expected = _commits_until_killed(ends, bad, batch)
    assert [c[0] for c in expected[-2:]] == ["raw", "dead_letter"], expected

    returncode, stdout, stderr = _run_script(_KILLED_RUN, [book.bootstrap, table, topic, str(lake), str(batch)],
                                             test_env)
    assert returncode == -signal.SIGKILL, stdout + stderr[-3000:]
    commits = [tuple(line.split()[1:]) for line in stdout.splitlines() if line.startswith("committed")]
    assert commits == [(kind, str(p), str(end)) for kind, p, end in expected]
    # the killed partition's dead letters are committed, its rows are not
    raw_done = {p: max([end for kind, q, end in expected if kind == "raw" and q == p], default=0) for p in ends}
    dead_done = {p: max([end for kind, q, end in expected if kind == "dead_letter" and q == p], default=0)
                 for p in ends}
    assert _offsets(lake, table, topic) == raw_done
    assert _offsets(lake, table, topic, f"{lake}/raw/_dead_letter") == dead_done

    report = _spark(spark, book, lake, table, target_end=ends)
    assert report.start_offsets == raw_done and report.committed_offsets == ends
    _assert_once(lake, table, topic, sum(ends.values()))
    assert _raw_rows(lake, table).equals(_raw_rows(local, table))
    assert _dead_letters(lake, topic).equals(_dead_letters(local, topic))  # none twice, none lost
    _assert_delta_rs_can_write(f"{lake}/raw/{table}")


def test_a_table_started_by_either_path_continues_with_the_other(spark, book: Book, tmp_path: Path) -> None:
    table, topic, ends = "payments", book.topic("payments"), book.ends("payments")
    thirds = [{p: end * k // 3 for p, end in ends.items()} for k in (1, 2)]
    python_first, spark_first, local = tmp_path / "python_first", tmp_path / "spark_first", tmp_path / "local"

    # both paths read exactly up to a target end, also while other partitions catch up
    assert _python(book, python_first, table, target_end=thirds[0], batch=100).committed_offsets == thirds[0]
    assert _spark(spark, book, python_first, table, target_end=thirds[1]).start_offsets == thirds[0]
    assert _python(book, python_first, table).start_offsets == thirds[1]  # delta-rs appends after Spark's commits

    assert _spark(spark, book, spark_first, table, target_end=thirds[0]).start_offsets == {0: 0, 1: 0}
    assert _python(book, spark_first, table, target_end=thirds[1], batch=100).start_offsets == thirds[0]
    assert _spark(spark, book, spark_first, table).committed_offsets == ends

    _python(book, local, table, target_end=ends)
    for lake in (python_first, spark_first):
        _assert_once(lake, table, topic, sum(ends.values()))
        assert _raw_rows(lake, table).equals(_raw_rows(local, table))
        assert _offsets(lake, table, topic) == ends
        _assert_delta_rs_can_write(f"{lake}/raw/{table}")
    # the Delta log says which engine made which commit, offsets in the commit's metadata
    spark_commits = [c for c in DeltaTable(f"{spark_first}/raw/{table}").history()
                     if c.get("engineInfo", "").startswith("Apache-Spark") and c.get("userMetadata")]
    assert spark_commits and all(json.loads(c["userMetadata"])["cardo.table"] == table for c in spark_commits)


_KILLED_MID_WRITE = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from pathlib import Path
    from cardo_pipeline.spark.session import spark_session
    from cardo_pipeline.spark.ingest import ingest_topic_with_spark
    from cardo_pipeline.tables import TABLES_BY_NAME

    bootstrap, table, topic, lake = sys.argv[1:5]
    raw = Path(lake) / "raw" / table
    committed_once = threading.Event()

    def committed_files() -> set[str]:
        files = set()
        for commit in (raw / "_delta_log").glob("*.json"):
            for line in commit.read_text().splitlines():
                action = json.loads(line)
                if "add" in action:
                    files.add(action["add"]["path"])
        return files

    def kill_when_a_file_is_written_but_not_committed() -> None:
        committed_once.wait()
        while True:
            written = {p.name for p in raw.glob("*.parquet")}
            if written - committed_files():
                print("killed mid-write", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.002)

    def after_commit(commit):
        if commit.table == "raw":
            committed_once.set()

    threading.Thread(target=kill_when_a_file_is_written_but_not_committed, daemon=True).start()
    ingest_topic_with_spark(spark_session(), bootstrap, TABLES_BY_NAME[table], topic, str(raw),
                            f"{lake}/raw/_dead_letter", max_batch_messages=int(sys.argv[5]), after_commit=after_commit)
""")


@pytest.mark.timeout(600)
def test_a_spark_run_killed_while_writing_files_loses_and_doubles_nothing(
    spark, book: Book, tmp_path: Path, test_env: dict[str, str]
) -> None:
    """Killed after its data files are written and before Delta commits them: the files stay behind, unreferenced,
    and the rerun lands every message exactly once."""
    table, topic, ends = "payments", book.topic("payments"), book.ends("payments")
    lake, local = tmp_path / "spark", tmp_path / "local"
    _python(book, local, table, target_end=ends)
    batch = max(10, min(ends.values()) // 6)  # several rounds per partition
    returncode, stdout, stderr = _run_script(_KILLED_MID_WRITE,
                                             [book.bootstrap, table, topic, str(lake), str(batch)], test_env)
    assert returncode == -signal.SIGKILL and "killed mid-write" in stdout, stdout + stderr[-3000:]
    raw_uri = f"{lake}/raw/{table}"
    held = _offsets(lake, table, topic)
    assert 0 < sum(held.values()) < sum(ends.values())  # some rounds were committed, not all
    referenced = {Path(f).name for f in DeltaTable(raw_uri).file_uris()}
    assert {p.name for p in Path(raw_uri).glob("*.parquet")} - referenced  # the killed write's files, orphaned

    report = _spark(spark, book, lake, table, target_end=ends)
    assert report.start_offsets == held and report.committed_offsets == ends
    _assert_once(lake, table, topic, sum(ends.values()))
    assert _raw_rows(lake, table).equals(_raw_rows(local, table))
