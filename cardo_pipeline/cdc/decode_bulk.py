"""Bulk operations that find their own failures: JSON lines parsed in one call, columns converted in one call.

What belongs here: the machinery `cardo_pipeline.cdc.decode` uses to stay vectorised without letting one bad
record fail its batch. A bulk call that fails is bisected until the failing single items are found, so k bad
items among n cost about 2k·log2(n/k) extra, smaller, calls. Also the worker threads: pyarrow releases the GIL
while it parses and computes, so independent pieces of a batch run on all cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
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


def split_evenly(lines: list[bytes], pieces: int, min_bytes: int = 4 << 20) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges of about equal bytes, at most `pieces`, none much under `min_bytes`."""
    sizes = np.fromiter(map(len, lines), np.int64, len(lines))
    total = int(sizes.sum())
    count = max(1, min(pieces, total // min_bytes))
    if count == 1:
        return [(0, len(lines))]
    cuts = np.searchsorted(np.cumsum(sizes), [total * k // count for k in range(1, count)])
    bounds = [0, *sorted(set(int(c) + 1 for c in cuts if 0 <= c < len(lines) - 1)), len(lines)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


# --- JSON lines ---------------------------------------------------------------------------------------------

def _read_lines(lines: list[bytes], schema: pa.Schema) -> pa.Table:
    """Exactly one JSON object per line, read in a single block.

    Why one block: pyarrow.json cuts blocks at raw line breaks, and a block that starts with a bare `null` crashes
    the reader (pyarrow 25). Every line starts with "{", so one block always starts with an object; a raw line
    break inside a line only adds documents, which the row count catches.
    """
    data = b"\n".join(lines)
    table = pa_json.read_json(
        pa.BufferReader(data),
        read_options=pa_json.ReadOptions(block_size=len(data) + 1, use_threads=False),
        parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
    )
    if table.num_rows != len(lines):
        raise ValueError("the payload is not exactly one JSON object")
    return table


def invalid_utf8(lines: list[bytes]) -> dict[int, str]:
    """Lines that are not UTF-8: pyarrow.json would copy their bytes into string columns unchecked."""
    bad: dict[int, str] = {}
    for i, line in enumerate(lines):
        if not line.isascii():
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                bad[i] = f"malformed JSON: invalid UTF-8 ({error.reason} at payload byte {error.start})"
    return bad


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
    for position, reason in invalid_utf8(lines).items():
        result.failures[offset + position] = reason
    todo = np.asarray([i for i in range(len(lines)) if offset + i not in result.failures], np.int64)
    stack = [(0, len(todo))] if len(todo) else []
    while stack:
        low, high = stack.pop()
        part = todo[low:high]
        try:
            chunk = _read_lines(lines[low:high] if len(todo) == len(lines) else [lines[i] for i in part], schema)
        except BULK_ERRORS as error:
            if high - low == 1:
                result.failures[offset + int(part[0])] = str(error)
            else:
                middle = (low + high) // 2
                stack += [(middle, high), (low, middle)]  # the low half first: batches stay in line order
            continue
        result.add(chunk, part + offset)
    return result


def parse_lines_parallel(lines: list[bytes], schema: pa.Schema) -> list[Future[ParsedLines]]:
    """parse_lines over contiguous pieces, one per worker: the results are in line order."""
    return [submit(parse_lines, lines[start:end], schema, start) for start, end in split_evenly(lines, WORKERS)]


# --- column conversion ------------------------------------------------------------------------------------

def convert_pinpointing(
    decoder: FieldDecoder, parsed: pa.Array, target: pa.DataType
) -> tuple[pa.Array, dict[int, str]]:
    """Convert a column in one call; when that fails, bisect to the failing values (they become nulls)."""
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


def results(futures: Iterable[Future[T]]) -> list[T]:
    return [future.result() for future in futures]
