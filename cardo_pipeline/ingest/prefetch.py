"""Overlap consuming with decoding and writing: the next batch is fetched from Kafka while the current one is
decoded and committed (librdkafka and pyarrow release the GIL, so two cores both work).

Memory stays bounded: the fetching thread starts on a batch only while fewer than `ahead` batches wait, and a
batch stops waiting once the caller asks for the one after it (it is done with it then). With `ahead` 1, two
batches are held at a time, the one being written and the one being fetched; a queue of one would hold three
(the third fetched while one waits), ~20 MB more per worker for no speed: the writer is the slower side.
Nothing changes for exactly-once: commits still happen in order on the caller's thread, and a prefetched batch
that was never committed is simply read again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterator[T], ahead: int = 1) -> Iterator[T]:
    ready: queue.Queue = queue.Queue()
    slots = threading.Semaphore(ahead + 1)  # per batch held: the caller's and those fetched ahead of it
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                while not slots.acquire(timeout=0.2):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                item = next(items, _DONE)
                ready.put(item)
                if item is _DONE:
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised on the consuming thread
            ready.put(exc)

    worker = threading.Thread(target=produce, name="kafka-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            del item  # the caller is done with it: not held while the next one is fetched
            slots.release()
    finally:
        stop.set()
        worker.join(timeout=30)
