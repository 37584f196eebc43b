"""Debezium envelopes before any payload is parsed: schema plans, and values and keys split by position.

What belongs here: steps 1 and 2 of `cardo_pipeline.cdc.decode`. JsonConverter writes
`{"schema":S,"payload":P}` with S first, so a value that starts with the previous value's
`{"schema":S,"payload":` head has the same schema and its payload is the rest: grouping costs a memcmp, not a
parse. Each distinct schema text becomes, once per process, a `SchemaPlan` (column decoders, the explicit
schema for pyarrow.json, registry type checks).
Values with any other layout are normalised through `json.loads` (slow, rare) and then decode the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import pyarrow as pa

from cardo_pipeline.cdc.arrow_types import arrow_type_for_column
from cardo_pipeline.cdc.decode_bulk import parse_lines
from cardo_pipeline.cdc.decode_connect import FieldDecoder, UnsupportedConnectType, field_decoder
from cardo_pipeline.tables import SourceTable

IMAGES = ("before", "after")
SCHEMA_START = b'{"schema":'
PAYLOAD_KEY = b',"payload":'
TOMBSTONE_LINE = b"{}"  # a tombstone rides in its neighbours' group as an empty payload (see split_values)
_COMPACT = (",", ":")

# The part of Debezium's source block the raw table keeps; the parser skips the rest of the payload.
SOURCE_PARSE_TYPE = pa.struct([
    ("ts_ms", pa.int64()), ("ts_us", pa.int64()), ("snapshot", pa.string()),
    ("table", pa.string()), ("txId", pa.int64()), ("lsn", pa.int64()),
])


# --- schema plans -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SchemaPlan:
    """Everything decided from one envelope schema text, before any payload is read."""

    parse_schema: pa.Schema  # explicit schema for pyarrow.json: typed images, op and the useful source fields
    columns: dict[str, dict[str, FieldDecoder]]  # image -> column -> decoder, for the images in the schema
    registry_error: str | None  # set when a registry column's message type cannot land in its raw type


class SchemaTextInvalid(Exception):
    """The text before `,"payload":` is not JSON: the split point was wrong, or the value is broken."""


def _struct_fields(schema: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(schema, Mapping) or schema.get("type") != "struct":
        raise ValueError(f"not a Debezium envelope: {what} is not a struct schema")
    fields = schema.get("fields")
    if not isinstance(fields, list):
        raise ValueError(f"not a Debezium envelope: {what} has no field list")
    if not all(isinstance(f, Mapping) and isinstance(f.get("field"), str) for f in fields):
        raise ValueError(f"not a Debezium envelope: {what} has a field without a name")
    if len({f["field"] for f in fields}) != len(fields):
        raise ValueError(f"not a Debezium envelope: {what} names a field twice")
    return fields


def type_change(table: SourceTable, column: str, decoder: FieldDecoder, target: pa.DataType) -> str:
    return (f"incompatible type change: {table.name}.{column} is {decoder.describe} in the message, "
            f"which does not fit the raw table's {target}")


@lru_cache(maxsize=256)
def schema_plan(schema_text: bytes, table: SourceTable) -> SchemaPlan | str:
    """The plan for one envelope schema, or the dead-letter reason shared by every message using it.

    Raises SchemaTextInvalid when `schema_text` is not JSON (its messages are then normalised one by one).
    """
    try:
        schema = json.loads(schema_text)
    except (ValueError, RecursionError):
        raise SchemaTextInvalid from None
    try:
        envelope = {f["field"]: f for f in _struct_fields(schema, "the value schema")}
        images = {image: _struct_fields(envelope[image], image) for image in IMAGES if image in envelope}
    except ValueError as error:
        return str(error)
    missing = [name for name in ("op", "source") if name not in envelope]
    missing += [] if images else ["before/after"]
    if missing:
        return f"not a Debezium envelope: the value schema has no {' and no '.join(missing)} field"

    columns: dict[str, dict[str, FieldDecoder]] = {}
    parse_fields = []
    registry = set(table.column_names)
    for image, fields in images.items():
        decoders = {}
        for f in fields:
            try:
                decoders[f["field"]] = field_decoder(f)
            except UnsupportedConnectType as error:
                name = f["field"]
                raw = (f"the raw table's {arrow_type_for_column(table.column(name))}" if name in registry
                       else "any raw column")
                return (f"incompatible type change: {table.name}.{name} is {error} in the message, a Connect "
                        f"type without a decoder into {raw}")
        columns[image] = decoders
        parse_fields.append(pa.field(image, pa.struct([(n, d.parse_type) for n, d in decoders.items()])))
    parse_fields += [pa.field("source", SOURCE_PARSE_TYPE), pa.field("op", pa.string())]

    registry_error = None
    for column in table.columns:
        target = arrow_type_for_column(column)
        for decoders in columns.values():
            decoder = decoders.get(column.name)
            if decoder is not None and not decoder.accepts(target) and registry_error is None:
                registry_error = type_change(table, column.name, decoder, target)
    return SchemaPlan(pa.schema(parse_fields), columns, registry_error)


# --- values -------------------------------------------------------------------------------------------------

@dataclass
class Group:
    """Values sharing one schema text, in batch order: their record positions and payload texts."""

    head: bytes  # b'{"schema":' + schema text + b',"payload":'
    normalised: bool  # built from json.loads output, so a parse failure is final
    indices: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    sent: int = 0  # lines before this one have been handed out for parsing
    unsent: int = 0  # bytes of the lines after `sent`

    @property
    def schema_text(self) -> bytes:
        return self.head[len(SCHEMA_START): -len(PAYLOAD_KEY)]


class Outcome(NamedTuple):
    head: bytes | None
    line: bytes | None
    reason: str | None  # the dead-letter reason when the value cannot be split


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=_COMPACT).encode()  # ASCII escapes: never a raw line break


def normalise_value(value: bytes) -> Outcome:
    """The slow path for a value whose layout is unusual: parse it, re-serialise schema and payload."""
    try:
        document = json.loads(value)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        return Outcome(None, None, f"malformed JSON: {error}")
    if not isinstance(document, dict):
        return Outcome(None, None, f"not a Debezium envelope: the value is a JSON {type(document).__name__}")
    missing = [k for k in ("schema", "payload") if k not in document]
    if missing:
        return Outcome(None, None, f"not a Debezium envelope: no {' and no '.join(missing)}")
    payload = document["payload"]
    if not isinstance(payload, dict):
        return Outcome(None, None, f"not a Debezium envelope: the payload is {json.dumps(payload)[:40]}")
    try:
        return Outcome(SCHEMA_START + _dumps(document["schema"]) + PAYLOAD_KEY, _dumps(payload), None)
    except (ValueError, RecursionError) as error:
        return Outcome(None, None, f"malformed JSON: {error}")


def _locate(value: bytes) -> Outcome:
    """Split a value at its payload key when it has JsonConverter's layout; normalise it otherwise."""
    if value.startswith(SCHEMA_START) and value.endswith(b"}"):
        at = value.find(PAYLOAD_KEY)
        if at > 0 and value.startswith(b"{", at + len(PAYLOAD_KEY)):
            start = at + len(PAYLOAD_KEY)
            return Outcome(value[:start], value[start:-1], None)
    return normalise_value(value)


class SplitValues(NamedTuple):
    groups: list[Group]
    tombstones: list[int]  # every tombstone's record position
    loose_tombstones: list[int]  # tombstones not placed in a group (no value came before or after them)


ChunkReady = Callable[[Group, int, int], None]  # (group, first line, end line): lines ready to be parsed
_NO_HEAD: tuple[bytes, ...] = ()  # bytes.startswith(()) is always false


def split_values(values: Sequence[bytes | None], dead: dict[int, str], chunk_bytes: int = 1 << 62,
                 on_chunk: ChunkReady | None = None) -> SplitValues:
    """Group values by schema text; values that cannot be split get a reason in `dead`.

    Tombstones join the group of the value before them as an empty payload, so a topic with one schema is one
    group in batch order, and its rows need no reordering. (The row decoder knows them by position.)
    Every `chunk_bytes` of a group's payloads, and for the rest at the end, `on_chunk` is called, so parsing
    can start while splitting goes on.
    """
    groups: dict[bytes, Group] = {}
    tombstones: list[int] = []
    pending: list[int] = []  # tombstones before the first splittable value
    head: bytes | tuple[bytes, ...] = _NO_HEAD
    size = 0
    group: Group | None = None
    indices: list[int] = []
    lines: list[bytes] = []
    unsent = 0  # payload bytes of the current group not yet handed to on_chunk
    for i, value in enumerate(values):
        if value is None:
            tombstones.append(i)
            if group is None:
                pending.append(i)
            else:
                indices.append(i)
                lines.append(TOMBSTONE_LINE)
        # The hot path: the previous value's schema text, so the payload is the rest. (value[-1] is safe: the
        # value starts with a non-empty head; value[size] is reached only when the value is longer than it.)
        elif value.startswith(head) and value[-1] == 0x7D and value[size] == 0x7B:
            line = value[size:-1]
            indices.append(i)
            lines.append(line)
            unsent += len(line)
            if unsent >= chunk_bytes and on_chunk is not None and group is not None:
                on_chunk(group, group.sent, len(lines))
                group.sent, unsent = len(lines), 0
        else:
            outcome = _locate(value)
            if outcome.reason is not None:
                dead[i] = outcome.reason
                continue
            if group is not None:
                group.unsent = unsent
            head, size = outcome.head, len(outcome.head)
            group = groups.get(outcome.head)
            if group is None:
                group = groups[outcome.head] = Group(outcome.head, False)
                if pending:
                    group.indices += pending
                    group.lines += [TOMBSTONE_LINE] * len(pending)
                    pending = []
            indices, lines, unsent = group.indices, group.lines, group.unsent
            indices.append(i)
            lines.append(outcome.line)
            unsent += len(outcome.line)
    if on_chunk is not None:
        for each in groups.values():
            if each.sent < len(each.lines):
                on_chunk(each, each.sent, len(each.lines))
                each.sent = len(each.lines)
    return SplitValues(list(groups.values()), tombstones, pending)


# --- keys ---------------------------------------------------------------------------------------------------

ANY_OBJECT = pa.schema([("_", pa.null())])  # to check texts are JSON objects, reading nothing from them


def _normalise_key(key: bytes) -> tuple[bytes | None, str | None]:
    try:
        document = json.loads(key)
    except (ValueError, RecursionError) as error:
        return None, f"malformed key JSON: {error}"
    if isinstance(document, dict) and "schema" in document and "payload" in document:
        document = document["payload"]
    text = json.dumps(document, separators=_COMPACT, ensure_ascii=False)
    try:
        return text.encode(), None
    except UnicodeEncodeError:  # a lone surrogate escape: keep it escaped
        return _dumps(document), None


class KeySlices(NamedTuple):
    texts: list[bytes | None]  # per record: the key payload's JSON text (None for a null key)
    sliced: list[int]  # records whose text was sliced out without parsing: still to be checked


def slice_keys(keys: Sequence[bytes | None], dead: dict[int, str]) -> KeySlices:
    """Each key's payload text, sliced like the values' (Debezium writes it compact; kept verbatim)."""
    texts: list[bytes | None] = [None] * len(keys)
    sliced: list[int] = []
    head: bytes | tuple[bytes, ...] = _NO_HEAD
    size = 0
    for i, key in enumerate(keys):
        if key is None:
            continue
        if not (key.startswith(head) and key.endswith(b"}") and key.startswith(b"{", size)):
            at = key.find(PAYLOAD_KEY) if key.startswith(SCHEMA_START) and key.endswith(b"}") else -1
            if at < 0 or not key.startswith(b"{", at + len(PAYLOAD_KEY)):
                texts[i], reason = _normalise_key(key)
                if reason:
                    dead.setdefault(i, reason)
                continue
            head, size = key[: at + len(PAYLOAD_KEY)], at + len(PAYLOAD_KEY)
        texts[i] = key[size:-1]
        sliced.append(i)
    return KeySlices(texts, sliced)


def _is_utf8(text: bytes) -> bool:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_key_slices(keys: Sequence[bytes | None], slices: KeySlices) -> dict[int, str]:
    """Check the sliced key texts in bulk (JSON objects, UTF-8); a key that fails is normalised, or returned
    with its reason."""
    dead: dict[int, str] = {}
    if slices.sliced:
        texts = [slices.texts[i] for i in slices.sliced]
        bad = set(parse_lines(texts, ANY_OBJECT).failures)
        if not b"".join(texts).isascii():
            bad.update(position for position, text in enumerate(texts) if not _is_utf8(text))
        for position in sorted(bad):
            i = slices.sliced[position]
            slices.texts[i], reason = _normalise_key(keys[i])
            if reason:
                dead[i] = reason
    return dead
