"""The Rust crate agrees with the Python path wherever it decides: whatever it accepts, pyarrow.json (the
definition) accepts and reads the same; whatever it hands back, the Python path gets.

Property tests throw JSON at it that mostly fits a parse schema and sometimes does not: wrong types, escapes,
non-ASCII text, lone surrogates, unknown and nested fields, raw line breaks, repeated keys, huge integers.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardo_pipeline.cdc import native
from cardo_pipeline.cdc.decode_bulk import BULK_ERRORS, _read_lines
from cardo_pipeline.cdc.decode_envelope import PAYLOAD_KEY, SCHEMA_START, slice_keys, split_values

pytestmark = pytest.mark.skipif(not native.enabled(), reason="never: the crate is built by `make venv`")

IMAGE = pa.struct([("id", pa.int64()), ("small", pa.int16()), ("day", pa.int32()), ("flag", pa.bool_()),
                   ("name", pa.string()), ("nothing", pa.null()),
                   ("decimal", pa.struct([("scale", pa.int32()), ("value", pa.string())]))])
SCHEMA = pa.schema([("before", IMAGE), ("after", IMAGE), ("op", pa.string())])

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", "a\"b", "back\\slash", "tab\there", "line\nbreak", "é", "☃", "𝄞", "\u0000"])
numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | numbers | texts
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner,
                                                                                           max_size=3), max_leaves=6)
images = st.none() | st.fixed_dictionaries({}, optional={
    "id": st.integers(-(2**63), 2**63 - 1) | anything, "small": st.integers(-(2**16), 2**16) | anything,
    "day": st.integers(-(2**31), 2**31 - 1), "flag": st.booleans() | anything, "name": texts | anything,
    "nothing": st.none() | anything, "decimal": st.none() | st.fixed_dictionaries(
        {"scale": st.integers(0, 10), "value": st.text(max_size=8)}), "extra": anything})
documents = st.fixed_dictionaries({"after": images}, optional={"before": images, "op": st.sampled_from("cud"),
                                                               "source": anything})


def _render(document: dict, draw_style: int) -> bytes:
    """JSON as Debezium writes it (compact), or with spaces, escaped non-ASCII, or a raw line break."""
    if draw_style == 0:
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    if draw_style == 1:
        return json.dumps(document, ensure_ascii=True).encode()
    if draw_style == 2:
        return json.dumps(document, indent=1).encode()  # raw line breaks: the Python path's to normalise
    text = json.dumps(document, separators=(",", ":"))
    return (text[:-1] + ',"op":"c"}').encode() if len(text) > 2 else text.encode()  # maybe a repeated key


def _pyarrow_row(line: bytes) -> dict | None:
    try:
        return _read_lines([line], SCHEMA).to_pylist()[0]
    except BULK_ERRORS:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(documents, st.integers(0, 3)), min_size=1, max_size=12))
def test_what_the_crate_accepts_pyarrow_reads_the_same(drawn):
    lines = [_render(document, style) for document, style in drawn]
    head = SCHEMA_START + b"{}" + PAYLOAD_KEY
    values = [head + line + b"}" for line in lines]
    rows = np.arange(len(values))
    batch, rejected = native.parse_payloads(values, rows, np.full(len(values), len(head)), SCHEMA)
    accepted = [i for i in range(len(lines)) if i not in set(rejected.tolist())]
    expected = [_pyarrow_row(lines[i]) for i in accepted]
    assert None not in expected, "the crate accepted a line pyarrow refuses"
    assert batch.to_pylist() == expected
    for i in rejected.tolist():  # hand-backs only where the line breaks or pyarrow refuses it
        assert drawn[i][1] in (2, 3) or _pyarrow_row(lines[i]) is None, lines[i]

def test_typical_payloads_are_all_accepted():
    line = b'{"before":null,"after":{"id":7,"small":-3,"day":19000,"flag":true,"name":"caf\\u00e9 \\"x\\"",' \
           b'"nothing":null,"decimal":{"scale":2,"value":"AQ=="},"extra":[1,{"a":2.5e3}]},"op":"u"}'
    head = SCHEMA_START + b"{}" + PAYLOAD_KEY
    values = [head + line + b"}", None]
    batch, rejected = native.parse_payloads(values, np.arange(2), np.full(2, len(head)), SCHEMA)
    assert rejected.tolist() == []
    assert batch.to_pylist() == [_pyarrow_row(line), {"before": None, "after": None, "op": None}]


@given(st.randoms())
def test_fields_in_any_order_parse_alike(random):
    """The crate tries the schema's next field first (Debezium's order) and searches the others."""
    after = {"id": 7, "small": -3, "day": 19000, "flag": True, "name": "n", "nothing": None,
             "decimal": {"scale": 2, "value": "AQ=="}, "extra": 1}
    document = {"before": None, "after": after, "op": "u"}

    def shuffled(value):
        if not isinstance(value, dict):
            return value
        keys = list(value)
        random.shuffle(keys)
        return {k: shuffled(value[k]) for k in keys}

    head = SCHEMA_START + b"{}" + PAYLOAD_KEY
    lines = [json.dumps(document, separators=(",", ":")).encode(),
             json.dumps(shuffled(document), separators=(",", ":")).encode()]
    batch, rejected = native.parse_payloads([head + line + b"}" for line in lines], np.arange(2),
                                            np.full(2, len(head)), SCHEMA)
    assert rejected.tolist() == []
    first, second = batch.to_pylist()
    assert first == second == _pyarrow_row(lines[0])


@given(st.lists(st.sampled_from([
    b'{"schema":{"a":1},"payload":{"x":1}}', b'{"schema":{"a":2},"payload":{"x":2}}', None, b"not json",
    b'{"schema":{"a":1},"payload":[1]}', b'{"payload":{"x":1},"schema":{}}', b'{"schema":{"a":1},"payload":{}}',
]), max_size=20))
def test_splitting_agrees_with_the_python_path(values):
    split = native.split_envelopes(values)
    python = split_values(values, {})
    grouped = {i: group.head for group in python.groups for i, line in zip(group.indices, group.lines,
                                                                          strict=True) if values[i] is not None}
    for i, value in enumerate(values):
        group = int(split.groups[i])
        if value is None:
            assert group == -1
        elif group >= 0:  # what the crate splits, the Python path splits alike
            assert split.heads[group] == grouped[i]
            assert value[split.starts[i]:-1] == value[len(grouped[i]):-1]
        else:  # what it leaves, the Python path does not split on its fast path either
            assert not (value.startswith(b'{"schema":') and b',"payload":{' in value and value.endswith(b"}")
                        ) or i not in grouped or grouped[i] != value[:value.find(PAYLOAD_KEY) + len(PAYLOAD_KEY)]


@given(st.lists(st.sampled_from([
    b'{"schema":{"k":1},"payload":{"loan_id":1}}', b'{"schema":{"k":1},"payload":{"loan_id":22}}', None,
    b'{"schema":{"k":2},"payload":{"id":"\xc3\xa9"}}', b'{"schema":{"k":1},"payload":{"_":1}}',
    b'{"schema":{"k":1},"payload":{"bad":\xff}}', b'{"loan_id":3}', b'{"schema":{"k":1},"payload":{"a":\n1}}',
]), max_size=20))
def test_key_slices_agree_with_the_python_path(keys):
    array, for_python = native.slice_keys(keys)
    python = slice_keys(keys, {})
    texts = array.to_pylist()
    for i, key in enumerate(keys):
        if key is None:
            assert texts[i] is None
        elif i not in for_python:
            assert texts[i].encode() == python.texts[i]
