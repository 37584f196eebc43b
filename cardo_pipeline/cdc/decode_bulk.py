"""Bulk operations that find their own failures: JSON lines parsed in one call, columns converted in one call.

What belongs here: the machinery `cardo_pipeline.cdc.decode` uses to stay vectorised without letting one bad
record fail its batch. A bulk call that fails is bisected until the failing single items are found, so k bad
items among n cost about 2k·log2(n/k) extra, smaller, calls. Also the worker threads: pyarrow releases the GIL
while it parses and computes, so the pieces of a batch run on all cores while Python splits the next ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from cardo_pipeline.cdc.decode_connect import FieldDecoder

BULK_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError, ArithmeticError)
WORKERS = max(1, min(4, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None
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
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="cdc-decode")
    return _pool.submit(function, *args)


# --- JSON lines ---------------------------------------------------------------------------------------------

def _read_lines(lines: list[bytes], schema: pa.Schema) -> pa.Table:
    """Exactly one JSON object per line, read in a single block.

    Why one block: pyarrow.json cuts blocks at raw line breaks, and a block that starts with a bare `null`
    crashes the reader (pyarrow 25). Every line starts with "{", so a single block starts with an object; a raw
    line break inside a line only adds documents, which the row count catches. Why validate: the reader copies
    string bytes into string columns without checking they are UTF-8 (bytes in skipped fields do no harm).
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

    def add(self, table: pa.Table, positions: np.ndarray) -> None:
        start = 0
        for batch in table.to_batches():
            self.batches.append(batch)
            self.positions.append(positions[start:start + batch.num_rows])
            start += batch.num_rows


def parse_lines(lines: list[bytes], schema: pa.Schema, offset: int = 0) -> ParsedLines:
    """Parse lines that each start with "{" against an explicit schema; positions are `offset` + line index."""
    result = ParsedLines()
    stack = [(0, len(lines))] if lines else []
    while stack:
        low, high = stack.pop()
        try:
            table = _read_lines(lines[low:high], schema)
        except BULK_ERRORS as error:
            if high - low == 1:
                result.failures[offset + low] = str(error)
            else:
                middle = (low + high) // 2
                stack += [(middle, high), (low, middle)]  # the low half first: batches stay in line order
            continue
        result.add(table, np.arange(offset + low, offset + high, dtype=np.int64))
    return result


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
