"""The Rust fast path of the decoder (`native/`, module `cardo_native`), as Arrow arrays.

What belongs here: turning the crate's buffers into pyarrow arrays, and deciding when it can be used. The crate
decodes only what it is sure of, exactly as the Python path would, and hands back everything else by index, so
the Python path (`decode_envelope`, `decode_bulk`) stays the definition of the event contract. Without the
crate (or with CARDO_NATIVE_DECODER=0) the decoder gives the same rows, about three times slower.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

try:
    import cardo_native as _crate
except ImportError:  # not built: `make venv` builds it; the Python path decodes the same rows
    _crate = None

_KINDS = {pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64",
          pa.bool_(): "bool", pa.string(): "string", pa.null(): "null"}


def enabled() -> bool:
    return _crate is not None and os.environ.get("CARDO_NATIVE_DECODER", "1") != "0"


def _spec(data_type: pa.DataType) -> tuple[str, Any] | None:
    if pa.types.is_struct(data_type):
        children = [(f.name, _spec(f.type)) for f in data_type]
        return None if any(spec is None for _, spec in children) else ("struct", children)
    kind = _KINDS.get(data_type)
    return None if kind is None else (kind, None)


@lru_cache(maxsize=256)
def spec_for(schema: pa.Schema) -> tuple[str, Any] | None:
    """The crate's description of a parse schema, or None when it has a type the crate leaves to pyarrow."""
    return _spec(pa.struct(list(schema)))


def _array(data_type: pa.DataType, length: int, buffers: tuple) -> pa.Array:
    if pa.types.is_null(data_type):
        return pa.nulls(length)
    validity = None if buffers[0] is None else pa.py_buffer(buffers[0])
    if pa.types.is_struct(data_type):
        children = [_array(f.type, length, child) for f, child in zip(data_type, buffers[1], strict=True)]
        return pa.Array.from_buffers(data_type, length, [validity], children=children)
    if pa.types.is_string(data_type):
        offsets, data = buffers[1], buffers[2]
        if len(offsets) == 8 * (length + 1):  # more than 2 GiB of text: 64-bit offsets
            return pa.Array.from_buffers(pa.large_string(), length, [validity, pa.py_buffer(offsets),
                                                                     pa.py_buffer(data)]).cast(pa.string())
        return pa.Array.from_buffers(data_type, length, [validity, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.Array.from_buffers(data_type, length, [validity, pa.py_buffer(buffers[1])])


class SplitEnvelopes(NamedTuple):
    heads: list[bytes]  # the distinct schema texts, up to and including the payload key
    groups: np.ndarray  # int32 per value: index into heads; -1 tombstone; -2 for the Python path
    starts: np.ndarray  # int64 per value: where its payload object starts


def split_envelopes(values: list[bytes | None]) -> SplitEnvelopes:
    heads, groups, starts = _crate.split_envelopes(values)
    return SplitEnvelopes(heads, np.frombuffer(groups, np.int32), np.frombuffer(starts, np.int64))


def parse_payloads(values: list[bytes | None], rows: np.ndarray, starts: np.ndarray, schema: pa.Schema
                   ) -> tuple[pa.RecordBatch, np.ndarray]:
    """Rows `rows` of `values` parsed against `schema` (None values: rows of nulls), and the positions (in
    `rows`) of those the crate leaves to the Python path, which are not in the batch."""
    top, rejected = _crate.parse_payloads(
        values, np.ascontiguousarray(rows, np.int64).tobytes(), np.ascontiguousarray(starts, np.int64).tobytes(),
        spec_for(schema),
    )
    length = len(rows) - len(rejected)
    struct = _array(pa.struct(list(schema)), length, top)
    return pa.RecordBatch.from_struct_array(struct), np.asarray(rejected, np.int64)


def slice_keys(keys: Sequence[bytes | None]) -> tuple[pa.Array, list[int]]:
    """The key payload texts as a string array, and the positions whose text the Python path must give."""
    validity, offsets, data, for_python = _crate.slice_keys(keys if isinstance(keys, list) else list(keys))
    array = pa.Array.from_buffers(pa.string(), len(keys), [
        None if validity is None else pa.py_buffer(validity), pa.py_buffer(offsets), pa.py_buffer(data)])
    return array, for_python
