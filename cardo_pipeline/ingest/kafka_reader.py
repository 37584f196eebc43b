"""Bounded batches from explicitly assigned Kafka partitions: no consumer group, no commits, ever.

The raw tables are the only record of what was consumed; a reader is always told where to start.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from cardo_pipeline.cdc.decode import KafkaMessages


@dataclass(frozen=True)
class ReadTarget:
    """Read each partition from `start` up to (excluding) `end`, the end offsets seen when the run began."""

    topic: str
    start: dict[int, int]
    end: dict[int, int]


# Messages per consume() call: they are held whole (a few kB each) only until the batch strips their heads.
CONSUME_MESSAGES = 2_000
# A batch also ends at this many bytes of keys and values as held: its memory (the values, then their decoded
# rows and the Parquet file) follows its bytes, not its message count. 20k payments messages hold ~13 MB; a
# wide table's batch ends earlier (loans: ~13k), so a worker's peak is the same whichever table it reads.
MAX_BATCH_BYTES = 13 << 20


def consumer_config(bootstrap: str) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": "cardo-raw-ingest",  # librdkafka wants one; offsets are never committed to it
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "error",  # an offset that is gone must fail loudly, never skip silently
        "fetch.max.bytes": 64 * 1024 * 1024,
        # A small prefetch queue refilled at once: librdkafka waits fetch.queue.backoff.ms (1 s by default) before
        # fetching again once a partition's queue is full, which starved the reader with small queues and made
        # big ones (16 MB fetches, 32 MB queues) look necessary. Measured on 830k payments events: 74k/s and
        # 1.6 GB peak RSS with the big queue, 100k/s and 0.85 GB with 4 MB fetches and 8 MB queues; 1 MB of each
        # reads as fast and keeps a partition worker at ~430 MB instead of ~580 MB (lz4 JSON inflates ~10x).
        "max.partition.fetch.bytes": 1024 * 1024,
        "queued.max.messages.kbytes": 1024,  # per partition: bounds the prefetch memory
        "fetch.queue.backoff.ms": 5,
        "fetch.wait.max.ms": 50,
        "socket.timeout.ms": 10_000,
    }


def read_batches(
    bootstrap: str, target: ReadTarget, max_messages: int, idle_timeout_s: float = 10.0,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[KafkaMessages]:
    """Yield batches of at most `max_messages` records (and about `max_bytes` held: a batch ends at the first
    consume() call that reaches it) until every partition reaches its end offset."""
    todo = {p: e for p, e in target.end.items() if e > target.start.get(p, 0)}
    if not todo:
        return
    consumer = Consumer(consumer_config(bootstrap))
    try:
        consumer.assign([TopicPartition(target.topic, p, target.start.get(p, 0)) for p in todo])
        position = {p: target.start.get(p, 0) for p in todo}
        paused: set[int] = set()
        last_progress = time.monotonic()
        while any(position[p] < end for p, end in todo.items()):
            batch = KafkaMessages()
            while (len(batch) < max_messages and batch.held_bytes < max_bytes
                   and any(position[p] < end for p, end in todo.items())):
                # Never ask for more than is left: consume() waits out its timeout while it has fewer messages
                # than asked for, which cost half a second at the end of every partition.
                left = sum(end - position[p] for p, end in todo.items() if position[p] < end)
                messages = consumer.consume(num_messages=min(CONSUME_MESSAGES, max_messages - len(batch), left),
                                            timeout=0.5)
                if not messages:
                    if time.monotonic() - last_progress > idle_timeout_s:
                        raise TimeoutError(
                            f"{target.topic}: no messages for {idle_timeout_s:.0f} s at {position}, "
                            f"expected up to {todo}"
                        )
                    continue
                last_progress = time.monotonic()
                failed = [m for m in messages if m.error() is not None]
                for m in failed:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(m.error())
                good = [m for m in messages if m.error() is None] if failed else messages
                # A partition fetches on while others are read: what lies past its end offset is the next run's
                within = [m for m in good if m.offset() < todo[m.partition()]]
                start = len(batch)
                batch.extend(within if len(within) < len(good) else good)
                position.update(batch.next_offsets(start))
                done = [p for p, end in todo.items() if position[p] >= end and p not in paused]
                if done:
                    consumer.pause([TopicPartition(target.topic, p) for p in done])
                    paused.update(done)
            if len(batch):
                yield batch
    finally:
        consumer.close()
