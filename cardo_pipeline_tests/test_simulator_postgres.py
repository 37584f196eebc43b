"""The Postgres sink against a real servicing database: after a small simulation every table holds exactly the
rows of the in-memory replay (so updates that do not SET servicer_notes kept it), and the truth is stored."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from cardo_pipeline.simulator import simulate
from cardo_pipeline.simulator.postgres_sink import SOURCE_TABLES, PostgresSink, SimulatorSinkError
from cardo_pipeline.tables import TABLES_BY_NAME
from cardo_pipeline_tests.test_simulator import START, ReplaySink

pytestmark = pytest.mark.stack

PARAMS: dict[str, Any] = {"loans": 150, "months": 14, "seed": 99, "start": START}


def _table_rows(conn: psycopg.Connection, table: str) -> dict[int, dict[str, Any]]:
    spec = TABLES_BY_NAME[table]
    (pk,) = spec.primary_key
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        rows = cur.execute(f"SELECT {', '.join(spec.column_names)} FROM public.{table}").fetchall()
    return {row[pk]: row for row in rows}


def test_postgres_sink_matches_the_replay(servicing_dsn: str) -> None:
    with psycopg.connect(servicing_dsn, autocommit=True) as conn:
        # The database may hold an earlier test's rows: start from empty tables.
        conn.execute(
            "TRUNCATE public.borrowers, public.loans, public.collaterals, public.payments, "
            "simulator.loan_truth"
        )

    with PostgresSink(servicing_dsn) as sink:
        summary = simulate(sink, **PARAMS)
    replay = ReplaySink()
    simulate(replay, **PARAMS)
    assert summary.written == summary.total_changes == sum(replay.ops.values())

    with psycopg.connect(servicing_dsn, autocommit=True) as conn:
        for table in SOURCE_TABLES:
            stored = _table_rows(conn, table)
            assert len(stored) == len(replay.tables[table]), table
            assert stored == replay.tables[table], f"{table} differs from the replay"
        truth = conn.execute("SELECT loan_id, as_of_date, pd_12m FROM simulator.loan_truth").fetchall()
        assert {(i, d): p for i, d, p in truth} == replay.truth
        long_notes = conn.execute(
            "SELECT count(*) FROM public.loans WHERE octet_length(servicer_notes) >= 3000"
        ).fetchone()
        assert long_notes and long_notes[0] > 0

    # A second run into the same tables is refused (the ids would collide) unless asked to reset.
    with pytest.raises(SimulatorSinkError, match="already hold rows"):
        PostgresSink(servicing_dsn)
    with PostgresSink(servicing_dsn, reset=True) as sink:
        again = simulate(sink, **PARAMS)
    assert again.as_dict() == summary.as_dict()
