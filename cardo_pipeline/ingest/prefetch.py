"""Overlap consuming with decoding and writing: one batch is fetched from Kafka while the previous one is
decoded and committed (librdkafka and pyarrow release the GIL, so two cores both work).

Memory stays bounded (at most `depth` batches wait), and nothing changes for exactly-once: commits still
happen in order on the caller's thread, and a prefetched batch that was never committed is simply read again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the consuming thread
            buffer.put(exc)

    worker = threading.Thread(target=produce, name="kafka-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=30)
