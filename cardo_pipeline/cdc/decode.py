"""Decode a batch of one topic's Debezium messages (JsonConverter with schemas) into raw Arrow rows.

What belongs here: the public decoder and the per-row rules of the event contract (ARCHITECTURE section 4)
seen from the consumer side. A batch of `KafkaRecord`s becomes a `DecodedBatch`: the records that decode, as
rows in the raw layout of `arrow_types.raw_arrow_schema`, and the others as dead letters with a reason;
len(rows) + len(dead_letters) == len(records), always, and decoding never raises on message content.

How (all messages of a topic share a schema, so the work is per schema, then per column):
1. `decode_envelope` splits each value into schema text and payload text by position (a memcmp against the
   previous value's schema, no parsing), grouping by schema; tombstones ride along as empty payloads.
2. Each distinct schema is planned once per process: column decoders, registry type checks.
3. While the splitting goes on, worker threads parse each group's payloads with pyarrow.json, some MB a call
   (`decode_bulk`). A failing call is bisected, or screened in Python when many lines are bad, down to the
   bad records, which are normalised through json.loads and parsed again, or dead-lettered.
4. Per parsed chunk, on the workers: op rules, source.table, TOAST markers and vectorised column conversions
   (`decode_connect`), again bisected on failure, so one bad message never costs its batch.
5. With nothing dead-lettered, the chunks' columns become the rows as they are (no copy, in input order).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cardo_pipeline.cdc import native
from cardo_pipeline.cdc.arrow_types import (
    DEAD_LETTER_SCHEMA,
    KAFKA_TIMESTAMP,
    UTC_MICROS,
    arrow_type_for_column,
    raw_arrow_schema,
    wider_type,
)
from cardo_pipeline.cdc.decode_bulk import WORKERS, ParsedLines, convert_pinpointing, parse_lines, submit
from cardo_pipeline.cdc.decode_connect import UNAVAILABLE_VALUE
from cardo_pipeline.cdc.decode_envelope import (
    ANY_OBJECT,
    IMAGES,
    PAYLOAD_KEY,
    SCHEMA_START,
    Group,
    SchemaPlan,
    SchemaTextInvalid,
    check_key_slices,
    normalise_value,
    schema_plan,
    slice_keys,
    split_values,
    type_change,
)
from cardo_pipeline.tables import SourceTable

__all__ = [
    "OP_RULES", "TOMBSTONE_OP", "UNAVAILABLE_VALUE", "DecodedBatch", "KafkaMessages", "KafkaRecord", "OpRule",
    "decode_batch",
    "raw_arrow_schema",
]

TOMBSTONE_OP = "tombstone"
# Payload bytes per pyarrow.json call and decoded piece: large enough to amortise the fixed cost of a call
# (2-3 ms each for parsing and for decoding), small enough that parsing starts early and uses every worker.
CHUNK_BYTES = 16 << 20
MIN_CHUNK_BYTES = 4 << 20
NATIVE_MIN_CHUNK = 2_000  # rows: below this, one parse call (the crate's fixed cost is small)


class KafkaRecord(NamedTuple):
    """One consumed Kafka message; `value` None is a tombstone."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # the record's Kafka timestamp; negative when the broker has none


class KafkaMessages(Sequence[KafkaRecord]):
    """Consumed messages held as columns (the reader builds these: no tuple per message); a sequence of
    KafkaRecord to everyone else.

    With the crate, values are held without their schema text from the moment they arrive: a Debezium value
    is ~85% schema (4.1 kB of which 0.6 kB payload, for payments), the same text in every message of a topic.
    `values` then holds each value from its payload object on, `heads` the distinct schema texts once, and a
    record's original value is its head + that rest, byte for byte (the crate checked the head). A batch of 10k
    messages holds ~8 MB instead of ~45 MB, and the prefetched batches with it.
    """

    def __init__(self, strip_heads: bool | None = None) -> None:
        self.topics: list[str] = []
        self.partitions: list[int] = []
        self.offsets: list[int] = []
        self.keys: list[bytes | None] = []
        self.values: list[bytes | None] = []  # without their heads when strip_heads
        self.timestamps_ms: list[int] = []
        self.strip_heads = native.enabled() if strip_heads is None else strip_heads
        self._head_ids: dict[bytes, int] = {}  # schema text -> its number in this batch, in order of arrival
        self._groups: list[np.ndarray] = []  # per extend: index into heads; -1 tombstone; -2 value kept whole
        self.held_bytes = 0  # keys and values as held (values without heads when stripped)

    def extend(self, messages: Sequence[Any]) -> None:
        """Append confluent-kafka messages (without errors), one list comprehension per column."""
        self.topics += [m.topic() for m in messages]
        self.partitions += [m.partition() for m in messages]
        self.offsets += [m.offset() for m in messages]
        keys = [m.key() for m in messages]
        values = [m.value() for m in messages]
        if self.strip_heads:
            values = self._without_heads(values)
        self.keys += keys
        self.values += values
        self.held_bytes += sum(map(len, filter(None, keys))) + sum(map(len, filter(None, values)))
        self.timestamps_ms += [m.timestamp()[1] for m in messages]

    def _without_heads(self, values: list[bytes | None]) -> list[bytes | None]:
        split = native.split_envelopes(values)
        ids = np.array([self._head_ids.setdefault(head, len(self._head_ids)) for head in split.heads] or [0],
                       np.int32)  # the crate's head numbers in this call -> the batch's
        self._groups.append(np.where(split.groups >= 0, ids[np.maximum(split.groups, 0)], split.groups))
        # starts is 0 exactly for the values the crate does not split (tombstones, other layouts): kept whole
        return [value[start:] if start else value for value, start in zip(values, split.starts.tolist(), strict=True)]

    @property
    def heads(self) -> list[bytes]:
        """The distinct schema texts (up to and including the payload key), numbered as in the groups."""
        return list(self._head_ids)

    def _head_groups(self) -> np.ndarray:
        if len(self._groups) != 1:  # one array from here on (extend appends another)
            self._groups = [np.concatenate(self._groups) if self._groups else np.empty(0, np.int32)]
        return self._groups[0]

    def envelopes(self) -> native.SplitEnvelopes | None:
        """The split of the values as the crate gives it (payloads start at 0), when heads are stripped."""
        if not self.strip_heads:
            return None
        groups = self._head_groups()
        return native.SplitEnvelopes(self.heads, groups, np.zeros(len(groups), np.int64))

    def original_values(self) -> Sequence[bytes | None]:
        """Each record's value as Kafka delivered it."""
        if not self.strip_heads:
            return self.values
        return _JoinedValues(self.heads, self._head_groups(), self.values)

    def next_offsets(self, start: int = 0) -> dict[int, int]:
        """The next offset to read per partition, after the messages from position `start` on."""
        # offsets grow within a partition, so the last one of each partition wins
        return dict(zip(self.partitions[start:], map((1).__add__, self.offsets[start:]), strict=True))

    def columns(self) -> tuple[list, ...]:
        """topics, partitions, offsets, keys, values (without heads when stripped), timestamps."""
        return self.topics, self.partitions, self.offsets, self.keys, self.values, self.timestamps_ms

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        values = self.original_values()
        return KafkaRecord(self.topics[i], self.partitions[i], self.offsets[i], self.keys[i], values[i],
                           self.timestamps_ms[i])


class _JoinedValues(Sequence[bytes | None]):
    """Original values, each joined again from its head and the rest (only for the few that need it)."""

    def __init__(self, heads: list[bytes], groups: np.ndarray, rests: list[bytes | None]) -> None:
        self.heads, self.groups, self.rests = heads, groups, rests

    def __len__(self) -> int:
        return len(self.rests)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        group = int(self.groups[i])
        return self.heads[group] + self.rests[i] if group >= 0 else self.rests[i]


@dataclass(frozen=True)
class DecodedBatch:
    rows: pa.Table  # raw_arrow_schema(table, new_columns), in input order (may hold several chunks)
    dead_letters: pa.Table  # DEAD_LETTER_SCHEMA, in input order
    # Image columns that are not in the registry (added at the source, or passed in as `evolved_columns`),
    # in the order they follow the registry's columns.
    new_columns: dict[str, pa.DataType] = field(default_factory=dict)


# --- per-op rules: one small strategy per event kind ------------------------------------------------------

@dataclass(frozen=True)
class OpRule:
    required_image: str | None  # the image this op cannot do without
    toast_image: str | None  # the image whose placeholders unchanged_toast lists
    keeps_images: bool = True


OP_RULES: dict[str, OpRule] = {
    "c": OpRule("after", "after"),  # insert
    "r": OpRule("after", "after"),  # snapshot read
    "u": OpRule("after", "after"),  # update (before is null under REPLICA IDENTITY DEFAULT)
    "d": OpRule("before", "before"),  # delete (before holds at least the key)
    "t": OpRule(None, None, keeps_images=False),  # truncate: a table-level event without rows
}


def _mask(array: pa.Array) -> np.ndarray:
    return pc.fill_null(array, False).to_numpy(zero_copy_only=False)


class _OpMasks(NamedTuple):
    images_kept: pa.Array  # rows whose images are kept (not truncates, not tombstones)
    toast_image: dict[str, np.ndarray]  # image -> rows whose unchanged_toast comes from that image


def _apply_op_rules(op: pa.Array, images: Mapping[str, pa.Array], tombstone: np.ndarray,
                    reasons: dict[int, str]) -> _OpMasks:
    """Check each row against its op's rule; the few distinct op values are looked up once, not per row."""
    n = len(op)
    encoded = op.dictionary_encode()
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    images_kept = ~tombstone
    toast_image = {image: np.zeros(n, bool) for image in IMAGES}
    present = {image: images[image].is_valid().to_numpy(zero_copy_only=False) if image in images
               else np.zeros(n, bool) for image in IMAGES}
    known = tombstone.copy()
    for code, value in enumerate(encoded.dictionary.to_pylist()):
        rule = OP_RULES.get(value)
        if rule is None:
            continue
        is_op = (codes == code) & ~tombstone
        known |= is_op
        if rule.required_image is not None:
            for row in np.flatnonzero(is_op & ~present[rule.required_image]).tolist():
                reasons.setdefault(row, f"missing {rule.required_image} for op {value}")
        if not rule.keeps_images:
            images_kept &= ~is_op
        if rule.toast_image is not None:
            toast_image[rule.toast_image] |= is_op
    for row in np.flatnonzero(~known).tolist():
        reasons.setdefault(row, f"unknown op {op[row].as_py()!r}")
    return _OpMasks(pa.array(images_kept), toast_image)


# --- one parsed piece -> raw columns ------------------------------------------------------------------------

class _Piece(NamedTuple):
    plan: SchemaPlan
    batch: pa.RecordBatch  # parsed payloads
    indices: np.ndarray  # record positions of its rows


class _DecodedPiece(NamedTuple):
    indices: np.ndarray
    columns: dict[str, pa.Array]  # the payload-derived raw columns
    reasons: dict[int, str]  # row -> dead-letter reason


def _decode_image(image: str, parsed_image: pa.StructArray, plan: SchemaPlan,
                  targets: Mapping[str, pa.DataType], masks: _OpMasks, toast_hits: dict[str, np.ndarray],
                  reasons: dict[int, str]) -> pa.Array:
    """One image as a struct column of the raw types; placeholders become nulls, recorded in toast_hits."""
    n = len(parsed_image)
    image_type = pa.struct([pa.field(name, data_type) for name, data_type in targets.items()])
    is_null = pc.invert(pc.and_(parsed_image.is_valid(), masks.images_kept))
    if parsed_image.null_count == n or not pc.any(pc.invert(is_null)).as_py():
        return pa.nulls(n, image_type)  # before of inserts and updates, after of deletes: nothing to convert
    decoders = plan.columns[image]
    children = []
    for name, target in targets.items():
        decoder = decoders.get(name)
        if decoder is None:  # dropped at the source, or added after this schema
            children.append(pa.nulls(n, target))
            continue
        values = parsed_image.field(name)
        if decoder.toast_marker is not None and values.null_count < n:
            marked = pc.equal(values, decoder.toast_marker)  # null where the value is null
            if pc.any(marked).as_py():
                values = pc.if_else(marked, pa.scalar(None, values.type), values)  # a marker, never a value
                hits = _mask(marked) & masks.toast_image[image]
                toast_hits[name] = toast_hits[name] | hits if name in toast_hits else hits
        converted, failures = convert_pinpointing(decoder, values, target)
        for row, error in failures.items():
            reasons.setdefault(row, f"undecodable value: {image}.{name} ({decoder.describe}) = {error}")
        children.append(converted)
    return pa.StructArray.from_arrays(children, fields=list(image_type), mask=is_null)


def _decode_piece(piece: _Piece, table: SourceTable, targets: Mapping[str, pa.DataType],
                  tombstone: np.ndarray) -> _DecodedPiece:
    plan, batch, n = piece.plan, piece.batch, piece.batch.num_rows
    reasons: dict[int, str] = {}
    is_tombstone = tombstone[piece.indices]
    op = batch.column("op")
    images = {image: batch.column(image) for image in plan.columns}
    masks = _apply_op_rules(op, images, is_tombstone, reasons)
    if is_tombstone.any():
        op = pc.if_else(pa.array(is_tombstone), pa.scalar(TOMBSTONE_OP), op)

    source = batch.column("source")
    source_table = source.field("table")
    for row in np.flatnonzero(~_mask(pc.equal(source_table, table.name)) & ~is_tombstone).tolist():
        reasons.setdefault(row, f"source.table {source_table[row].as_py()!r} does not match the topic's "
                                f"table {table.name!r}")

    columns: dict[str, pa.Array] = {}
    toast_hits: dict[str, np.ndarray] = {}
    for image in IMAGES:
        if image in images:
            columns[image] = _decode_image(image, images[image], plan, targets, masks, toast_hits, reasons)
        else:
            columns[image] = pa.nulls(n, pa.struct([pa.field(k, t) for k, t in targets.items()]))
    columns["op"] = op
    columns["unchanged_toast"] = _toast_lists({k: toast_hits[k] for k in targets if k in toast_hits}, n)
    columns["source_lsn"] = source.field("lsn")
    columns["source_tx_id"] = source.field("txId")
    columns["source_ts"] = _source_ts(source.field("ts_us"), source.field("ts_ms"), reasons)
    columns["source_table"] = source_table
    columns["snapshot"] = source.field("snapshot")
    return _DecodedPiece(piece.indices, columns, reasons)


def _source_ts(ts_us: pa.Array, ts_ms: pa.Array, reasons: dict[int, str]) -> pa.Array:
    """source.ts_us, or ts_ms for a Debezium that does not send it."""
    try:
        return pc.coalesce(ts_us, pc.multiply_checked(ts_ms, 1000)).cast(UTC_MICROS)
    except pa.ArrowInvalid:  # an absurd ts_ms somewhere: only the rows that need it are bad
        micros = []
        for row, (us, ms) in enumerate(zip(ts_us.to_pylist(), ts_ms.to_pylist(), strict=True)):
            if us is None and ms is not None and abs(ms) >= (1 << 63) // 1000:
                reasons.setdefault(row, f"undecodable value: source.ts_ms = {ms} is out of range")
                ms = None
            micros.append(us if us is not None else None if ms is None else ms * 1000)
        return pa.array(micros, pa.int64()).cast(UTC_MICROS)


def _toast_lists(hits_by_column: Mapping[str, np.ndarray], n: int) -> pa.Array:
    """unchanged_toast: per row, the names of the columns that carried the placeholder (usually none)."""
    names = list(hits_by_column)
    hits = np.stack([hits_by_column[name] for name in names], axis=1) if names else np.zeros((n, 0), bool)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(hits.sum(axis=1), out=offsets[1:])
    _, column_of_hit = np.nonzero(hits)  # row-major: each row's names in column order
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(names, pa.string()).take(column_of_hit))


# --- the batch ----------------------------------------------------------------------------------------------

class _ValueParser:
    """Parses each group chunk by chunk on the workers while the splitter is still going, then deals with
    the records that failed: normalised through json.loads and parsed in a second pass (an unusual but valid
    layout still decodes), or dead-lettered. Tombstones of groups that cannot be parsed become `loose`."""

    def __init__(self, values: Sequence[bytes | None], table: SourceTable, dead: dict[int, str]):
        self.values, self.table, self.dead = values, table, dead
        self.plans: dict[int, SchemaPlan | str | None] = {}  # id(group) -> plan; None: schema text not JSON
        self.started: list[tuple[Group, SchemaPlan, Future[ParsedLines]]] = []
        self.normalised: dict[bytes, Group] = {}
        self.loose: list[int] = []

    def plan(self, group: Group) -> SchemaPlan | str | None:
        if id(group) not in self.plans:
            try:
                self.plans[id(group)] = schema_plan(group.schema_text, self.table)
            except SchemaTextInvalid:
                self.plans[id(group)] = None
        return self.plans[id(group)]

    def on_chunk(self, group: Group, start: int, end: int) -> None:
        plan = self.plan(group)
        if isinstance(plan, SchemaPlan):
            future = submit(parse_lines, group.lines[start:end], plan.parse_schema, start)
            self.started.append((group, plan, future))

    def first_pass(self, groups: list[Group], tombstone: np.ndarray) -> Iterator[_Piece]:
        """The parsed pieces of the split groups, each as soon as it is parsed, in batch order per group."""
        for group in groups:
            plan = self.plan(group)
            if plan is None:
                for i in group.indices:
                    self._normalise(i, tombstone)
            elif isinstance(plan, str):
                self._dead_letter(group, plan, tombstone)
        yield from self._collect(self.started, tombstone)

    def second_pass(self, tombstone: np.ndarray) -> list[_Piece]:
        """The pieces of the records that only decoded after normalisation (usually none)."""
        started = []
        for group in self.normalised.values():
            plan = self.plan(group)
            if isinstance(plan, SchemaPlan):
                started.append((group, plan, submit(parse_lines, group.lines, plan.parse_schema, 0)))
            else:  # json.dumps output is always JSON, so this is a reason
                self._dead_letter(group, plan or "not a Debezium envelope", tombstone)
        return list(self._collect(started, tombstone))

    def _dead_letter(self, group: Group, reason: str, tombstone: np.ndarray) -> None:
        # A value that is not even JSON says so, rather than blaming the schema it shares: check in bulk.
        broken = parse_lines(group.lines, ANY_OBJECT).failures
        for position, i in enumerate(group.indices):
            if tombstone[i]:
                self.loose.append(i)
            else:
                precise = normalise_value(self.values[i]).reason if position in broken else None
                self.dead[i] = precise or reason

    def _normalise(self, i: int, tombstone: np.ndarray) -> None:
        if tombstone[i]:
            self.loose.append(i)
            return
        outcome = normalise_value(self.values[i])
        if outcome.reason is not None:
            self.dead[i] = outcome.reason
        else:
            group = self.normalised.setdefault(outcome.head, Group(outcome.head, True))
            group.indices.append(i)
            group.lines.append(outcome.line)

    def _collect(self, started: list[tuple[Group, SchemaPlan, Future[ParsedLines]]],
                 tombstone: np.ndarray) -> Iterator[_Piece]:
        indices_of: dict[int, np.ndarray] = {}
        for group, plan, future in started:
            parsed = future.result()
            for position, error in parsed.failures.items():
                if group.normalised or position in parsed.json_but_wrong_types:
                    self.dead[group.indices[position]] = f"undecodable value: {error}"
                else:  # perhaps valid JSON in another layout
                    self._normalise(group.indices[position], tombstone)
            if id(group) not in indices_of:
                indices_of[id(group)] = np.asarray(group.indices, np.int64)
            indices = indices_of[id(group)]
            for batch, positions in zip(parsed.batches, parsed.positions, strict=True):
                yield _Piece(plan, batch, indices[positions])


def _target_types(table: SourceTable, plans: list[SchemaPlan], evolved_columns: Mapping[str, pa.DataType]
                  ) -> tuple[dict[str, pa.DataType], dict[int, str]]:
    """The image column types: registry, evolved columns, then the columns new in this batch (the widest of
    their types across the batch's schemas). Also the reason for each plan (by id) whose types do not fit;
    columns only such plans bring are left out."""
    registry = {c.name: arrow_type_for_column(c) for c in table.columns}
    fixed = {**registry, **evolved_columns}
    errors = {id(plan): plan.registry_error for plan in plans if plan.registry_error is not None}
    while True:  # dropping a plan can change the widest types, so repeat until every kept plan fits
        new: dict[str, pa.DataType] = {}
        for plan in plans:
            for decoders in () if id(plan) in errors else plan.columns.values():
                for name, decoder in decoders.items():
                    if name not in fixed:
                        current = new.get(name)
                        widest = decoder.natural_type if current is None else wider_type(
                            current, decoder.natural_type)
                        new[name] = widest or current  # a schema that conflicts is dead-lettered below
        targets = {**fixed, **new}
        misfits = {
            id(plan): type_change(table, name, decoder, targets[name])
            for plan in plans if id(plan) not in errors
            for decoders in plan.columns.values() for name, decoder in decoders.items()
            if name not in registry and not decoder.accepts(targets[name])
        }
        if not misfits:
            return targets, errors
        errors.update(misfits)


def _tombstone_piece(indices: list[int], schema: pa.Schema) -> _DecodedPiece:
    n = len(indices)
    columns = {name: pa.nulls(n, schema.field(name).type) for name in _PAYLOAD_COLUMNS}
    columns["op"] = pa.repeat(pa.scalar(TOMBSTONE_OP), n)
    columns["unchanged_toast"] = _toast_lists({}, n)
    return _DecodedPiece(np.asarray(sorted(indices), np.int64), columns, {})


_PAYLOAD_COLUMNS = ("op", "before", "after", "unchanged_toast", "source_lsn", "source_tx_id", "source_ts",
                    "source_table", "snapshot")


def _python_pieces(values: list[bytes | None], table: SourceTable, tombstone: np.ndarray, dead: dict[int, str]
                   ) -> tuple[list[_Piece], list[int]]:
    """The Python path: split by schema text, parse with pyarrow.json (see the module docstring). Returns the
    parsed pieces and the tombstones that belong to no piece; reasons go to `dead`."""
    parser = _ValueParser(values, table, dead)
    # Two chunks per worker for smaller batches (payloads are roughly a third of the values' bytes).
    chunk_bytes = min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, sum(map(len, filter(None, values))) // (6 * WORKERS)))
    split = split_values(values, dead, chunk_bytes, parser.on_chunk)  # the workers start parsing meanwhile
    pieces = [*parser.first_pass(split.groups, tombstone), *parser.second_pass(tombstone)]
    return pieces, parser.loose + split.loose_tombstones


def _native_pieces(values: list[bytes | None], originals: Sequence[bytes | None], split: native.SplitEnvelopes,
                   table: SourceTable, tombstone: np.ndarray, dead: dict[int, str]) -> tuple[list[_Piece], list[int]]:
    """The same as `_python_pieces`, with the crate splitting and parsing what it is sure of; the rest (other
    layouts, bad JSON, schemas that are dead letters, types the crate leaves to pyarrow) takes the Python path,
    on the original values (`values` may be without their heads, see KafkaMessages)."""
    groups = split.groups.copy()
    # A tombstone joins the group of the value before it (leading ones the first group), as in split_values,
    # so a topic with one schema stays one piece in batch order.
    grouped = np.flatnonzero(groups >= 0)
    if len(grouped):
        before = np.maximum.accumulate(np.where(groups >= 0, np.arange(len(groups)), -1))
        joined = tombstone & (before >= 0)
        groups[joined] = groups[before[joined]]
        groups[tombstone & (before < 0)] = groups[grouped[0]]
    pieces: list[_Piece] = []
    leftover = [np.flatnonzero(groups < 0)]
    parsing = []
    for h, head in enumerate(split.heads):
        rows = np.flatnonzero(groups == h)
        try:
            plan = schema_plan(head[len(SCHEMA_START): -len(PAYLOAD_KEY)], table)
        except SchemaTextInvalid:
            plan = None
        if not isinstance(plan, SchemaPlan) or native.spec_for(plan.parse_schema) is None:
            leftover.append(rows)
            continue
        for chunk in np.array_split(rows, WORKERS) if len(rows) >= 4 * NATIVE_MIN_CHUNK else [rows]:
            parsing.append((plan, chunk, submit(native.parse_payloads, values, chunk, split.starts[chunk],
                                                plan.parse_schema)))
    for plan, chunk, future in parsing:
        batch, rejected = future.result()
        pieces.append(_Piece(plan, batch, np.delete(chunk, rejected)))
        leftover.append(chunk[rejected])
    rest = np.sort(np.concatenate(leftover))
    if not len(rest):
        return pieces, []
    # The Python path on the rest, in its own positions, mapped back.
    sub_dead: dict[int, str] = {}
    sub_pieces, sub_loose = _python_pieces([originals[i] for i in rest], table, tombstone[rest], sub_dead)
    dead.update({int(rest[i]): reason for i, reason in sub_dead.items()})
    pieces += [piece._replace(indices=rest[piece.indices]) for piece in sub_pieces]
    return pieces, [int(rest[i]) for i in sub_loose]


def _python_key_texts(keys: list[bytes | None]) -> tuple[list[bytes | None], dict[int, str]]:
    """Each key's payload text (see `slice_keys`), and the reasons of keys that are not JSON."""
    key_dead: dict[int, str] = {}
    slices = slice_keys(keys, key_dead)
    key_dead.update(check_key_slices(keys, slices))
    return slices.texts, key_dead


def _native_key_texts(keys: list[bytes | None]) -> tuple[pa.Array | list[bytes | None], dict[int, str]]:
    texts, for_python = native.slice_keys(keys)
    if not for_python:
        return texts, {}
    sub_texts, sub_dead = _python_key_texts([keys[i] for i in for_python])
    patched = [None if text is None else text.encode() for text in texts.to_pylist()]
    for position, i in enumerate(for_python):
        patched[i] = sub_texts[position]
    return patched, {for_python[i]: reason for i, reason in sub_dead.items()}



def decode_batch(
    records: Sequence[KafkaRecord],
    table: SourceTable,
    *,
    ingested_at: datetime,
    evolved_columns: Mapping[str, pa.DataType] | None = None,
) -> DecodedBatch:
    """Decode one topic's messages for `table`. Never raises on message content.

    `evolved_columns` are non-registry columns the raw table already has (name -> Arrow type): every row gets
    them, and a message's type must fit them as it must fit registry types. Columns new in this batch follow.
    """
    if ingested_at.tzinfo is None:
        raise ValueError("ingested_at must be timezone-aware")
    n = len(records)
    split = None  # the crate's split, when the reader already made it or the crate is on
    if isinstance(records, KafkaMessages):
        topics, partitions, offsets, keys, values, timestamps = records.columns()
        split, originals = records.envelopes(), records.original_values()  # split: the reader stripped heads
    else:
        topics, partitions, offsets, keys, values, timestamps = zip(*records, strict=True) if n else ((),) * 6
        values, keys = list(values), list(keys)
        originals = values
    dead: dict[int, str] = {}  # record position -> reason
    if split is None and native.enabled():
        split = native.split_envelopes(values)
    if split is not None:
        tombstone = split.groups == -1  # the crate marks None values: no second pass over the values
        pieces, loose = _native_pieces(values, originals, split, table, tombstone, dead)
        key_texts, key_dead = _native_key_texts(keys)
    else:
        key_check = submit(_python_key_texts, keys)  # on a worker while the values are split
        tombstone = np.fromiter((value is None for value in values), bool, n)
        pieces, loose = _python_pieces(values, table, tombstone, dead)
        key_texts, key_dead = key_check.result()
    plans = list({id(piece.plan): piece.plan for piece in pieces}.values())
    targets, plan_errors = _target_types(table, plans, evolved_columns or {})
    new_columns = {name: t for name, t in targets.items() if name not in {c.name for c in table.columns}}
    schema = raw_arrow_schema(table, new_columns)
    # Decoding waits for every parse: decoding early pieces during parsing measured no faster (GIL handovers).
    decoding = [submit(_decode_piece, piece, table, targets, tombstone)
                for piece in pieces if id(piece.plan) not in plan_errors]

    for piece in pieces:
        if id(piece.plan) in plan_errors:
            for i in piece.indices.tolist():
                if tombstone[i]:
                    loose.append(i)
                else:
                    dead[i] = plan_errors[id(piece.plan)]
    decoded = [future.result() for future in decoding]
    for piece in decoded:
        for row, reason in piece.reasons.items():
            dead.setdefault(int(piece.indices[row]), reason)
    if loose:
        decoded.append(_tombstone_piece(loose, schema))
    for i, reason in key_dead.items():
        dead.setdefault(i, reason)  # a value's reason says more than its key's
    rows = _assemble_rows(decoded, dead, schema, (topics, partitions, offsets, key_texts, timestamps),
                          ingested_at)
    dead_letters = _dead_letter_table(dead, topics, partitions, offsets, keys, originals, ingested_at)
    return DecodedBatch(rows, dead_letters, new_columns)


def _assemble_rows(pieces: list[_DecodedPiece], dead: Mapping[int, str], schema: pa.Schema,
                   kafka: tuple[Sequence[Any], ...], ingested_at: datetime) -> pa.Table:
    """The pieces' columns, without dead-lettered records, in input order, with the Kafka columns added.

    With one schema in the batch and nothing dead-lettered, the pieces already are in input order and their
    columns are used as they are (no copy of the payload data).
    """
    if not pieces:
        return schema.empty_table()
    indices = np.concatenate([piece.indices for piece in pieces])
    keep = ~np.isin(indices, np.fromiter(dead, np.int64, len(dead))) if dead else np.ones(len(indices), bool)
    in_order = bool(keep.all()) and bool((np.diff(indices) > 0).all())
    order = None
    if not in_order:  # positions of the kept rows, sorted by record position
        order = pa.array(np.argsort(np.where(keep, indices, -1), kind="stable")[(~keep).sum():])
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    for name in _PAYLOAD_COLUMNS:
        chunked = pa.chunked_array([piece.columns[name] for piece in pieces], schema.field(name).type)
        columns[name] = chunked if order is None else chunked.take(order)
    kept = indices if in_order else np.sort(indices[keep])
    topics, partitions, offsets, key_texts, timestamps = kafka
    everything = len(kept) == len(topics)
    take = (lambda values: values) if everything else (lambda values: [values[i] for i in kept.tolist()])
    kafka_ms = np.asarray(take(timestamps), np.int64)
    if isinstance(key_texts, pa.Array):
        columns["key"] = key_texts if everything else key_texts.take(pa.array(kept))
    else:
        columns["key"] = pa.array(take(key_texts), pa.string())
    # a batch is of one topic: the column repeats it (converting 20k equal Python strings cost ~2% of a batch)
    one_topic = len(set(topics)) == 1
    columns["topic"] = (pa.repeat(pa.scalar(topics[0], pa.string()), len(kept)) if one_topic
                        else pa.array(take(topics), pa.string()))
    columns["partition"] = pa.array(take(partitions), pa.int32())
    columns["offset"] = pa.array(take(offsets), pa.int64())
    columns["kafka_timestamp"] = pa.array(kafka_ms, mask=kafka_ms < 0).cast(KAFKA_TIMESTAMP)
    columns["ingested_at"] = pa.repeat(pa.scalar(ingested_at, UTC_MICROS), len(kept))
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def _dead_letter_table(dead: Mapping[int, str], topics: Sequence[str], partitions: Sequence[int],
                       offsets: Sequence[int], keys: Sequence[bytes | None], values: Sequence[bytes | None],
                       dead_lettered_at: datetime) -> pa.Table:
    order = sorted(dead)
    return pa.Table.from_arrays([
        pa.array([topics[i] for i in order], pa.string()),
        pa.array([partitions[i] for i in order], pa.int32()),
        pa.array([offsets[i] for i in order], pa.int64()),
        pa.array([keys[i] for i in order], pa.binary()),
        pa.array([values[i] for i in order], pa.binary()),
        pa.array([dead[i] for i in order], pa.string()),
        pa.repeat(pa.scalar(dead_lettered_at, UTC_MICROS), len(order)),
    ], schema=DEAD_LETTER_SCHEMA)
