"""Property tests of apply-changes (ARCHITECTURE section 5): the curated tables agree with a plain replay.

A generated source history is valid Debezium output for one small table: inserts, updates (some with the TOASTed
column unchanged), deletes followed by Kafka tombstones, re-inserts, primary-key changes (delete + insert at one
LSN), snapshot reads and truncates. LSNs grow in source order and offsets grow per partition. Its delivery then
duplicates some events, shuffles everything and cuts it into batches anywhere. Whatever the delivery, the current
and history rows must equal what `curate.oracle.replay` gives for the events, re-applying a batch must change
nothing, and the order of the batches must not matter.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardo_pipeline.cdc.arrow_types import raw_arrow_schema
from cardo_pipeline.curate.apply import CuratedTables, apply_changes, current_rows, history_rows
from cardo_pipeline.curate.oracle import replay
from cardo_pipeline.tables import Column, SourceTable

THINGS = SourceTable(
    name="things",
    primary_key=("id",),
    description="A small test table with one TOASTed column.",
    toasted=("notes",),
    columns=(
        Column("id", "bigint"),
        Column("name", "text"),
        Column("amount", "numeric(12,2)", True),
        Column("notes", "text", True),
    ),
)
SCHEMA = raw_arrow_schema(THINGS)
TOPIC = "cardo.public.things"
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- a valid source history ---------------------------------------------------------------------------------

class Source:
    """Emits raw events of THINGS in source order, as Debezium would: each change gets a new LSN (a primary-key
    change's delete and insert share one; a snapshot's reads share one), offsets grow per partition, a delete
    is followed by its Kafka tombstone. `live` is the table in Postgres, TOASTed values included."""

    def __init__(self) -> None:
        self.lsn = 100
        self.next_offset = [0, 0]
        self.live: dict[int, dict] = {}
        self.events: list[dict] = []

    def _emit(self, op: str, key_id: int | None, lsn: int, *, before: dict | None = None,
              after: dict | None = None, toast: tuple[str, ...] = (), snapshot: str = "false",
              partition: int | None = None) -> dict:
        key = None if key_id is None else json.dumps({"id": key_id}, separators=(",", ":"))
        if partition is None:
            partition = zlib.crc32(key.encode()) % 2
        offset = self.next_offset[partition]
        self.next_offset[partition] += 1
        stamp = EPOCH + timedelta(seconds=lsn)
        tombstone = op == "tombstone"
        event = {
            "op": op, "key": key, "before": before, "after": after, "unchanged_toast": list(toast),
            "source_lsn": None if tombstone else lsn, "source_tx_id": None if tombstone else lsn,
            "source_ts": None if tombstone else stamp, "source_table": None if tombstone else THINGS.name,
            "snapshot": None if tombstone else snapshot, "topic": TOPIC, "partition": partition, "offset": offset,
            "kafka_timestamp": stamp, "ingested_at": EPOCH + timedelta(days=1),
        }
        self.events.append(event)
        return event

    def _next_lsn(self) -> int:
        self.lsn += 1
        return self.lsn

    def insert(self, id: int, *, lsn: int | None = None, **values: Any) -> dict:
        assert id not in self.live, f"{id} is live"
        row = {"id": id, "name": "n", "amount": None, "notes": None} | values
        self.live[id] = row
        return self._emit("c", id, lsn or self._next_lsn(), after=dict(row))

    def update(self, id: int, *, toast: bool = False, lsn: int | None = None, **changes: Any) -> dict:
        """An update; with `toast` the notes are unchanged and arrive as the placeholder (null + unchanged_toast)."""
        assert not (toast and "notes" in changes)
        row = self.live[id] | changes
        self.live[id] = row
        after = row | {"notes": None} if toast else dict(row)
        return self._emit("u", id, lsn or self._next_lsn(), after=after, toast=("notes",) if toast else ())

    def delete(self, id: int, *, lsn: int | None = None, tombstone: bool = True) -> dict:
        del self.live[id]
        # REPLICA IDENTITY DEFAULT: the before image has the key; NOT NULL columns get type defaults.
        event = self._emit("d", id, lsn or self._next_lsn(),
                           before={"id": id, "name": "", "amount": None, "notes": None})
        if tombstone:
            self._emit("tombstone", id, 0)
        return event

    def rekey(self, old: int, new: int, *, toast: bool = False, **changes: Any) -> tuple[dict, dict]:
        """A primary-key change: delete of the old key, its tombstone, insert of the new key, one LSN. With
        `toast` the insert carries the notes as the unchanged-TOAST placeholder, as Postgres decodes it."""
        assert not (toast and "notes" in changes)
        row = self.live[old] | changes
        del row["id"]
        lsn = self._next_lsn()
        deleted = self.delete(old, lsn=lsn)
        inserted = self.insert(new, lsn=lsn, **row)
        if toast:
            inserted["after"]["notes"], inserted["unchanged_toast"] = None, ["notes"]
        return deleted, inserted

    def snapshot(self) -> list[dict]:
        """A (re-)snapshot: a read of every live row, all at the snapshot's LSN."""
        lsn = self._next_lsn()
        ids = sorted(self.live)
        marks = ["true"] * len(ids)
        if ids:
            marks[0], marks[-1] = "first", "last"
        pairs = zip(ids, marks, strict=True)
        return [self._emit("r", i, lsn, after=dict(self.live[i]), snapshot=mark) for i, mark in pairs]

    def truncate(self, partition: int = 0) -> dict:
        self.live.clear()
        return self._emit("t", None, self._next_lsn(), partition=partition)


IDS = st.integers(1, 4)
NAMES = st.sampled_from(["ann", "bob", "cy"])
AMOUNTS = st.one_of(st.none(), st.integers(-(10**10), 10**10).map(lambda n: Decimal(n).scaleb(-2)))
NOTES = st.sampled_from([None, "", "short note", "long note " * 300])
VALUES = st.fixed_dictionaries({"name": NAMES, "amount": AMOUNTS, "notes": NOTES})
STEPS = st.one_of(
    st.tuples(st.just("write"), IDS, VALUES, st.booleans()),  # insert if absent, else update (maybe TOAST)
    st.tuples(st.just("write"), IDS, VALUES, st.booleans()),
    st.tuples(st.just("delete"), IDS, st.booleans()),
    st.tuples(st.just("rekey"), IDS, IDS, VALUES, st.booleans()),  # maybe with notes unchanged
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("truncate"), st.integers(0, 1)),
)


def build_source(initial: dict[int, dict], steps: list[tuple]) -> Source:
    """Plays `steps` on a table holding `initial` (read by an initial snapshot); a step that does not fit the
    table (delete of an absent key, a key change onto a live key) becomes the nearest one that does."""
    source = Source()
    for id, values in sorted(initial.items()):
        source.live[id] = {"id": id, **values}
    source.snapshot()
    for kind, *args in steps:
        if kind == "write":
            id, values, toast = args
            if id not in source.live:
                source.insert(id, **values)
            elif toast:
                source.update(id, toast=True, **{k: v for k, v in values.items() if k != "notes"})
            else:
                source.update(id, **values)
        elif kind == "delete":
            id, tombstone = args
            if id in source.live:
                source.delete(id, tombstone=tombstone)
            else:
                source.insert(id, name="re", notes="re")
        elif kind == "rekey":
            old, new, values, toast = args
            if old not in source.live:
                source.insert(old, **values)
            elif new in source.live:
                source.update(old, **values)
            else:
                source.rekey(old, new, toast=toast, **{k: v for k, v in values.items() if not toast or k != "notes"})
        elif kind == "snapshot":
            source.snapshot()
        else:
            source.truncate(partition=args[0])
    return source


# --- its delivery -------------------------------------------------------------------------------------------

def describe(event: dict) -> str:
    where = f"p{event['partition']}@{event['offset']}"
    if event["op"] == "tombstone":
        return f"tombstone {event['key']} {where}"
    if event["op"] == "t":
        return f"t lsn={event['source_lsn']} {where}"
    image = event["before"] if event["op"] == "d" else event["after"]
    values = "" if event["op"] == "d" else " " + repr({k: v for k, v in image.items() if k != "id"})
    toast = f" unchanged_toast={event['unchanged_toast']}" if event["unchanged_toast"] else ""
    return f"{event['op']} id={image['id']} lsn={event['source_lsn']} {where}{values}{toast}"


@dataclass
class Delivery:
    source_order: list[dict]
    batches: list[list[dict]]

    @property
    def delivered(self) -> list[dict]:
        return [event for batch in self.batches for event in batch]

    def __repr__(self) -> str:
        lines = ["Delivery(", "  source order:"] + [f"    {describe(e)}" for e in self.source_order]
        for i, batch in enumerate(self.batches):
            lines += [f"  batch {i}:"] + [f"    {describe(e)}" for e in batch]
        return "\n".join(lines + [")"])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis prints a falsifying example
        printer.text(repr(self))


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    initial = draw(st.dictionaries(IDS, VALUES, max_size=3))
    source = build_source(initial, draw(st.lists(STEPS, min_size=1, max_size=20)))
    events = source.events
    if not events:
        return Delivery(events, [])
    again = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    delivered = draw(st.permutations(events + again))
    cuts = sorted(draw(st.sets(st.integers(1, len(delivered) - 1), max_size=6))) if len(delivered) > 1 else []
    bounds = [0, *cuts, len(delivered)]
    return Delivery(events, [delivered[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])


# --- applying -----------------------------------------------------------------------------------------------

def arrow(batch: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(batch, schema=SCHEMA)


def apply_all(batches: list[list[dict]], state: CuratedTables | None = None) -> CuratedTables:
    state = CuratedTables.empty(THINGS) if state is None else state
    for batch in batches:
        state = apply_changes(state, arrow(batch), THINGS)
    return state


def observed(state: CuratedTables) -> tuple[list[dict], list[dict]]:
    return current_rows(state, THINGS), history_rows(state, THINGS)


def assert_matches_oracle(state: CuratedTables, events: list[dict]) -> None:
    current, history = observed(state)
    expected_current, expected_history = replay(events, THINGS)
    assert current == expected_current
    assert history == expected_history


# --- properties ---------------------------------------------------------------------------------------------

@PROPERTIES
@given(deliveries())
def test_any_delivery_ends_where_the_oracle_does(delivery: Delivery) -> None:
    assert_matches_oracle(apply_all(delivery.batches), delivery.delivered)


@settings(PROPERTIES, max_examples=100)
@given(deliveries(), st.data())
def test_reapplying_an_applied_batch_changes_nothing(delivery: Delivery, data: st.DataObject) -> None:
    batches = delivery.batches
    if not batches:
        return
    applied = data.draw(st.integers(1, len(batches)), label="batches applied before the repeat")
    repeated = data.draw(st.integers(0, applied - 1), label="batch repeated")
    state = apply_all(batches[:applied])
    seen = observed(state)
    again = apply_changes(state, arrow(batches[repeated]), THINGS)
    assert observed(again) == seen
    assert observed(state) == seen  # apply_changes returns a new state and leaves the old one alone
    assert_matches_oracle(apply_all(batches[applied:], again), delivery.delivered)


@settings(PROPERTIES, max_examples=100)
@given(deliveries(), st.data())
def test_the_order_of_the_batches_does_not_matter(delivery: Delivery, data: st.DataObject) -> None:
    batches = delivery.batches
    order = data.draw(st.permutations(range(len(batches))), label="batch order")
    assert observed(apply_all([batches[i] for i in order])) == observed(apply_all(batches))


# --- named cases --------------------------------------------------------------------------------------------

def things(*rows: dict) -> list[dict]:
    return [{"id": None, "name": None, "amount": None, "notes": None} | row for row in rows]


def version(row: dict, valid_from: dict, valid_to: dict | None) -> dict:
    return things(row)[0] | {
        "valid_from_lsn": valid_from["source_lsn"], "valid_from_offset": valid_from["offset"],
        "valid_to_lsn": valid_to and valid_to["source_lsn"], "valid_to_offset": valid_to and valid_to["offset"],
        "is_current": valid_to is None,
    }


def check(batches: list[list[dict]], current: list[dict], history: list[dict]) -> None:
    """The curated tables after `batches` are `current` and `history`, and so says the oracle."""
    events = [e for batch in batches for e in batch]
    assert replay(events, THINGS) == (current, history), "the oracle disagrees with the named case"
    state = apply_all(batches)
    assert current_rows(state, THINGS) == current
    assert history_rows(state, THINGS) == history


def test_a_stale_delete_does_not_remove_a_newer_row() -> None:
    src = Source()
    first = src.insert(1, name="a")
    gone = src.delete(1)
    back = src.insert(1, name="b")
    check([[back], [gone], [first]], things({"id": 1, "name": "b"}),
          [version({"id": 1, "name": "a"}, first, gone), version({"id": 1, "name": "b"}, back, None)])


def test_a_late_insert_does_not_resurrect_a_deleted_row() -> None:
    src = Source()
    born = src.insert(1, name="a", amount=Decimal("1.50"))
    changed = src.update(1, amount=Decimal("2.00"))
    gone = src.delete(1)
    check([[gone], [changed], [born]], [],
          [version({"id": 1, "name": "a", "amount": Decimal("1.50")}, born, changed),
           version({"id": 1, "name": "a", "amount": Decimal("2.00")}, changed, gone)])


def test_an_unchanged_toast_update_keeps_notes_set_by_an_event_that_arrives_later() -> None:
    src = Source()
    born = src.insert(1, name="a", notes="first")
    noted = src.update(1, notes="second")
    renamed = src.update(1, toast=True, name="b")
    renamed_again = src.update(1, toast=True, name="c")
    history = [version({"id": 1, "name": "a", "notes": "first"}, born, noted),
               version({"id": 1, "name": "a", "notes": "second"}, noted, renamed),
               version({"id": 1, "name": "b", "notes": "second"}, renamed, renamed_again),
               version({"id": 1, "name": "c", "notes": "second"}, renamed_again, None)]
    current = things({"id": 1, "name": "c", "notes": "second"})
    check([[born, renamed_again], [renamed], [noted]], current, history)
    check([[renamed, born], [renamed_again, noted]], current, history)


def test_an_unchanged_toast_value_with_no_live_version_before_it_is_null() -> None:
    src = Source()
    born = src.insert(1, name="a", notes="kept")
    gone, moved = src.rekey(1, 2, toast=True, name="b")  # the new key has no earlier version to keep notes from
    check([[moved], [gone, born]], things({"id": 2, "name": "b"}),
          [version({"id": 1, "name": "a", "notes": "kept"}, born, gone), version({"id": 2, "name": "b"}, moved, None)])


def test_a_truncate_empties_the_table_as_of_its_lsn_even_for_events_that_arrive_after_it() -> None:
    src = Source()
    one = src.insert(1, name="a")
    two = src.insert(2, name="b")
    wiped = src.truncate()
    three = src.insert(3, name="c")
    check([[one, wiped, three], [two]], things({"id": 3, "name": "c"}),
          [version({"id": 1, "name": "a"}, one, wiped), version({"id": 2, "name": "b"}, two, wiped),
           version({"id": 3, "name": "c"}, three, None)])


def test_a_primary_key_change_moves_the_row_even_when_both_halves_share_lsn_and_offset() -> None:
    src = Source()
    src.next_offset = [7, 7]
    born = src.insert(1, name="a", notes="x")  # {"id":1} and {"id":2} land on different partitions
    src.next_offset[1 - born["partition"]] = born["offset"] + 1  # the insert half gets the delete half's offset
    gone, moved = src.rekey(1, 2, name="b")
    assert (gone["source_lsn"], gone["offset"]) == (moved["source_lsn"], moved["offset"])
    assert gone["partition"] != moved["partition"]
    check([[moved, gone], [born]], things({"id": 2, "name": "b", "notes": "x"}),
          [version({"id": 1, "name": "a", "notes": "x"}, born, gone),
           version({"id": 2, "name": "b", "notes": "x"}, moved, None)])


def test_the_offset_orders_events_of_one_key_that_share_an_lsn() -> None:
    src = Source()
    born = src.insert(1, name="a", notes="x")
    changed = src.update(1, lsn=born["source_lsn"], toast=True, name="b")  # as when the LSN is the transaction's
    check([[changed], [born]], things({"id": 1, "name": "b", "notes": "x"}),
          [version({"id": 1, "name": "a", "notes": "x"}, born, changed),
           version({"id": 1, "name": "b", "notes": "x"}, changed, None)])


def test_snapshot_reads_are_upserts() -> None:
    src = Source()
    born = src.insert(1, name="a")
    [read] = src.snapshot()
    changed = src.update(1, name="b")
    check([[changed, read], [born]], things({"id": 1, "name": "b"}),
          [version({"id": 1, "name": "a"}, born, read), version({"id": 1, "name": "a"}, read, changed),
           version({"id": 1, "name": "b"}, changed, None)])


def test_duplicates_kafka_tombstones_and_empty_batches_change_nothing() -> None:
    src = Source()
    born = src.insert(1, name="a")
    gone = src.delete(1)
    tombstone = src.events[-1]
    expected = ([], [version({"id": 1, "name": "a"}, born, gone)])
    check([[born, born], [tombstone], [], [gone, tombstone, born], []], *expected)
    assert observed(apply_all([[tombstone], []])) == ([], [])
