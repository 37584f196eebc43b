"""The reader's prefetch: order, bounded memory (batches held at a time), errors and early exits."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cardo_pipeline.ingest.prefetch import prefetch


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 12), st.integers(1, 3), st.lists(st.floats(0, 0.003), min_size=1, max_size=5))
def test_items_come_in_order_and_at_most_ahead_plus_one_are_held(count, ahead, pauses):
    finished = -1  # the last item the caller is done with
    held_most = 0

    def source():
        nonlocal held_most
        for i in range(count):
            held_most = max(held_most, i - finished)  # items started but not yet done with, this one included
            time.sleep(pauses[i % len(pauses)])
            yield i

    seen = []
    for item in prefetch(source(), ahead=ahead):
        seen.append(item)
        time.sleep(pauses[-1 - item % len(pauses)])
        finished = item
    assert seen == list(range(count))
    assert held_most <= ahead + 1


def test_the_next_item_is_fetched_while_the_caller_works():
    fetched = threading.Event()

    def source():
        yield 1
        fetched.set()
        yield 2

    items = prefetch(source())
    assert next(items) == 1
    assert fetched.wait(5), "the second item was not fetched while the first was in use"
    assert list(items) == [2]


def test_a_failure_of_the_source_reaches_the_caller_after_the_items_before_it():
    def source():
        yield 1
        raise ConnectionError("broker gone")

    items = prefetch(source())
    assert next(items) == 1
    with pytest.raises(ConnectionError, match="broker gone"):
        next(items)


def test_leaving_early_stops_the_fetching_thread():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = set(threading.enumerate())  # other tests' threads may end meanwhile: only new ones count
    for item in prefetch(endless()):
        if item == 3:
            break
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(threading.enumerate()) - before
