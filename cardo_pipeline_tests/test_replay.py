"""`cardo replay FILE --lake DIR`: the raw writer fed from a console-consumer dump, bad lines dead-lettered."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl

from cardo_pipeline.cdc.encode import EnvelopeEncoder
from cardo_pipeline.curate.oracle import replay
from cardo_pipeline.mirror.iceberg import sql_catalog
from cardo_pipeline.simulator import simulate
from cardo_pipeline.tables import SOURCE_TABLES, TABLES_BY_NAME
from cardo_pipeline_tests.raw_helpers import read_table


class _Collect:
    def __init__(self) -> None:
        self.transactions = []

    def write(self, transactions) -> int:
        self.transactions.extend(transactions)
        return sum(len(t.changes) for t in transactions)

    def write_truth(self, rows) -> None:
        pass


def _dump(path: Path) -> Counter:
    sink = _Collect()
    simulate(sink, loans=12, months=3, seed=4)
    per_table: Counter = Counter()
    with open(path, "wb") as out:
        for message in EnvelopeEncoder().encode(sink.transactions):
            out.write((message.value or b"null") + b"\n")
            per_table[message.topic.rsplit(".", 1)[1]] += 1
        out.write(b"{not json\n")
        out.write(b'{"payload": {"op": "c"}}\n')  # no source.table: cannot be attributed
    return per_table


LOANS = TABLES_BY_NAME["loans"]


def _replay(path: Path, lake: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "cardo_pipeline.cli", "replay", str(path), "--lake", str(lake)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_replay_lands_each_line_once_and_dead_letters_bad_lines(tmp_path: Path) -> None:
    dump = tmp_path / "servicing.jsonl"
    per_table = _dump(dump)
    report = _replay(dump, tmp_path / "lake")
    assert report["landed"] == dict(per_table)
    assert report["dead_lettered"] == 2
    for table, count in per_table.items():
        assert read_table(f"{tmp_path}/lake/raw/{table}").num_rows == count
    dead = read_table(f"{tmp_path}/lake/raw/_dead_letter").to_pylist()
    assert {d["value"] for d in dead} == {b"{not json\n", b'{"payload": {"op": "c"}}\n'}
    for table in SOURCE_TABLES:  # and on to curated, equal to the oracle's replay of the raw rows
        expected_current, _ = replay(read_table(f"{tmp_path}/lake/raw/{table.name}").to_pylist(), table)
        names, key = [c.name for c in table.columns], list(table.primary_key)
        assert pl.read_delta(f"{tmp_path}/lake/curated/{table.name}").select(names).sort(key).to_dicts() == \
            expected_current
        assert report["curated"][table.name]["events_applied"] == per_table[table.name]
        assert report["iceberg"][table.name]["rows"] == len(expected_current)
    catalog = sql_catalog(f"sqlite:///{tmp_path}/lake/iceberg/catalog.db", tmp_path / "lake" / "iceberg" / "warehouse")
    loans = pl.from_arrow(catalog.load_table("curated.loans").scan().to_arrow())
    assert loans.select([c.name for c in LOANS.columns]).sort("loan_id").to_dicts() == \
        replay(read_table(f"{tmp_path}/lake/raw/loans").to_pylist(), LOANS)[0]

    again = _replay(dump, tmp_path / "lake")
    assert again["landed"] == {} and again["dead_lettered"] == 0
    assert all(c["events_applied"] == 0 for c in again["curated"].values())
    assert again["skipped_already_landed"] == sum(per_table.values())


def test_replay_of_a_missing_file_names_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cardo_pipeline.cli", "replay", str(tmp_path / "nope.jsonl")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "nope.jsonl does not exist" in result.stderr
