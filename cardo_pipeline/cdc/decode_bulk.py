"""Bulk operations that find their own failures: JSON lines parsed in one call, columns converted in one call.

What belongs here: the machinery `cardo_pipeline.cdc.decode` uses to stay vectorised without letting one bad
record fail its batch. A bulk call that fails is bisected until the failing single items are found, so k bad
items among n cost about 2k·log2(n/k) extra, smaller, calls; when bad lines are many, JSON lines are screened
one by one in Python instead. Also the worker threads: pyarrow releases the GIL while it parses and computes,
so the pieces of a batch run on all cores while Python splits the next ones.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from cardo_pipeline.cdc.decode_connect import FieldDecoder

BULK_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError, ArithmeticError)
# One core is left to the Kafka reader (the prefetch thread and librdkafka's): on 2 cores one decode thread
# ingested 100k events/s where two gave 93k (they only took turns with the reader for the GIL and the cores).
WORKERS = max(1, min(4, (os.cpu_count() or 1) - 1))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
T = TypeVar("T")


def _forget_pool_after_fork() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads: it starts its own pool when it needs one


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def submit(function: Callable[..., T], *args: Any) -> Future[T]:
    """Run on the shared worker threads (inline when there is one core: threads would only add overhead)."""
    global _pool
    if WORKERS == 1:
        future: Future[T] = Future()
        future.set_result(function(*args))
        return future
    with _pool_lock:  # batches of several topics may be decoded from several threads at once
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="cdc-decode")
    return _pool.submit(function, *args)


# --- JSON lines ---------------------------------------------------------------------------------------------

def _read_lines(lines: list[bytes], schema: pa.Schema) -> pa.Table:
    """Exactly one JSON object per line, read in a single block.

    Why one block: pyarrow.json cuts blocks at raw line breaks, and a block that starts with a bare `null`
    crashes the reader (pyarrow 25). Every line starts with "{", so a single block starts with an object;
    a raw line break inside a line only adds documents, which the row count catches. Why validate: the reader
    copies string bytes into string columns without checking they are UTF-8 (skipped fields do no harm).
    """
    data = b"\n".join(lines)
    table = pa_json.read_json(
        pa.BufferReader(data),
        read_options=pa_json.ReadOptions(block_size=len(data) + 1, use_threads=False),
        parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
    )
    if table.num_rows != len(lines):
        raise ValueError("the payload is not exactly one JSON object")
    if not data.isascii():
        table.validate(full=True)
    return table


class ParsedLines:
    """The outcome of parsing lines: record batches, the line positions of their rows, failures by line."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.positions: list[np.ndarray] = []
        self.failures: dict[int, str] = {}
        self.json_but_wrong_types: set[int] = set()  # failures that are valid JSON: no re-reading can help

    def add(self, table: pa.Table, positions: np.ndarray) -> None:
        start = 0
        for batch in table.to_batches():
            self.batches.append(batch)
            self.positions.append(positions[start:start + batch.num_rows])
            start += batch.num_rows


# pyarrow.json costs 1-2 ms a call whatever its size, so bisecting down to single lines is slow when many
# lines are bad. A failing range is screened line by line in Python instead (json.loads and a type check,
# ~0.1 ms a line) when that is cheaper, judging by the share of bad lines found so far.
_READ_CALL_MS = 1.5
_SCREEN_LINE_MS = 0.08


def _screening_is_cheaper(lines: int, bad_share: float) -> bool:
    bad = max(1.0, lines * bad_share)
    bisecting = 2 * bad * max(1.0, math.log2(lines / bad)) * _READ_CALL_MS
    return lines * _SCREEN_LINE_MS < bisecting


def parse_lines(lines: list[bytes], schema: pa.Schema, offset: int = 0) -> ParsedLines:
    """Parse lines that each start with "{" against an explicit schema (positions: `offset` + line index)."""
    result = ParsedLines()
    # (line positions, screened): a range the Python screen passed that pyarrow still refuses is bisected
    stack: list[tuple[np.ndarray, bool]] = [(np.arange(len(lines)), False)] if lines else []
    seen = 0  # lines whose fate is known, for the share of bad ones
    while stack:
        part, screened = stack.pop()
        if not len(part):
            continue
        try:
            table = _read_lines([lines[i] for i in part] if len(part) < len(lines) else lines, schema)
        except BULK_ERRORS as error:
            if len(part) == 1:
                result.failures[offset + int(part[0])] = str(error)
                seen += 1
            elif not screened and _screening_is_cheaper(len(part), len(result.failures) / max(seen, 1)):
                kept = _screen(lines, part, schema, offset, result)
                seen += len(part) - len(kept)
                stack.append((kept, True))
            else:
                middle = len(part) // 2
                stack += [(part[middle:], screened), (part[:middle], screened)]  # batches stay in line order
            continue
        result.add(table, part + offset)
        seen += len(part)
    return result


def _screen(lines: list[bytes], part: np.ndarray, schema: pa.Schema, offset: int,
            result: ParsedLines) -> np.ndarray:
    """Find the bad lines of a small failing range with json.loads and a type check; return the others."""
    kept = []
    for i in part.tolist():
        reason, is_json = screen_line(lines[i], schema)
        if reason is None:
            kept.append(i)
        else:
            result.failures[offset + i] = reason
            if is_json:
                result.json_but_wrong_types.add(offset + i)
    return np.asarray(kept, dtype=np.int64)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("an object has the same key twice")
    return document


TypeCheck = Callable[[Any], "str | None"]  # a JSON value -> why it does not fit, or None


def screen_line(line: bytes, schema: pa.Schema) -> tuple[str | None, bool]:
    """Why pyarrow.json would refuse this line against `schema` (None: it should not), and whether the line
    is valid JSON at all. The same rules as the reader: explicit types, unknown fields skipped."""
    try:
        document = json.loads(line, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as error:
        return f"malformed JSON: {error}", False
    if not isinstance(document, dict):
        return "not a JSON object", True
    return _schema_check(schema)(document), True


_schema_checks: dict[int, tuple[pa.Schema, TypeCheck]] = {}


def _schema_check(schema: pa.Schema) -> TypeCheck:
    cached = _schema_checks.get(id(schema))
    if cached is None or cached[0] is not schema:  # keeping the schema keeps its id from being reused
        cached = _schema_checks[id(schema)] = (schema, _type_check(pa.struct(list(schema)), ""))
    return cached[1]


def _mismatch(path: str, expected: str, value: Any) -> str:
    return f"{path or '/'} should be {expected}, not {json.dumps(value)[:60]}"


@lru_cache(maxsize=256)
def _type_check(data_type: pa.DataType, path: str) -> TypeCheck:
    """A check of JSON values against one parse type, built once per type (the screen runs it per line)."""
    if pa.types.is_struct(data_type):
        children = [(f.name, _type_check(f.type, f"{path}/{f.name}")) for f in data_type]

        def check_object(value: Any) -> str | None:
            if type(value) is not dict:
                return _mismatch(path, "an object", value)
            for name, check in children:
                member = value.get(name)
                if member is not None and (error := check(member)) is not None:
                    return error
            return None

        return check_object
    if pa.types.is_integer(data_type):
        low, high = -(1 << (data_type.bit_width - 1)), 1 << (data_type.bit_width - 1)
        return lambda value: None if type(value) is int and low <= value < high else _mismatch(
            path, str(data_type), value)
    if pa.types.is_floating(data_type):
        return lambda value: None if type(value) in (int, float) else _mismatch(path, "a number", value)
    if pa.types.is_boolean(data_type):
        return lambda value: None if type(value) is bool else _mismatch(path, "a boolean", value)
    if pa.types.is_string(data_type):

        def check_string(value: Any) -> str | None:
            if type(value) is not str:
                return _mismatch(path, "a string", value)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"{path} holds a lone surrogate escape"
            return None

        return check_string
    return lambda value: _mismatch(path, "null", value)  # pa.null(): fields only checked to be null


# --- column conversion ------------------------------------------------------------------------------------

def convert_pinpointing(
    decoder: FieldDecoder, parsed: pa.Array, target: pa.DataType
) -> tuple[pa.Array, dict[int, str]]:
    """Convert a column in one call; when that fails, bisect to the failing values (they become nulls)."""
    if parsed.null_count == len(parsed):
        return pa.nulls(len(parsed), target), {}
    try:
        return decoder.convert(parsed, target), {}
    except BULK_ERRORS:
        pass
    pieces: list[pa.Array] = []
    failures: dict[int, str] = {}
    stack = [(0, len(parsed))]
    while stack:
        low, high = stack.pop()
        try:
            pieces.append(decoder.convert(parsed.slice(low, high - low), target))
        except BULK_ERRORS as error:
            if high - low == 1:
                failures[low] = f"{parsed[low].as_py()!r}"[:120] + f": {error}"
                pieces.append(pa.nulls(1, target))
            else:
                middle = (low + high) // 2
                stack += [(middle, high), (low, middle)]
    return pa.concat_arrays(pieces), failures
