"""Test helpers that read real Kafka topics from given offsets (assign, never subscribe or commit)."""

from __future__ import annotations

import json
import time

from confluent_kafka import Consumer, TopicPartition

from cardo_pipeline.kafka_topics import end_offsets


def read_new_messages(
    bootstrap: str, topic: str, start: dict[int, int], expected: int, timeout_s: float = 60.0
) -> list[tuple[int, dict | None, dict | None]]:
    """(partition, key, value) of the messages after `start`, in partition then offset order, once `expected`
    have arrived; value None is a tombstone."""
    deadline = time.monotonic() + timeout_s
    while True:
        ends = end_offsets(bootstrap, [topic])[topic]
        available = sum(end - start.get(p, 0) for p, end in ends.items())
        if available >= expected:
            break
        assert time.monotonic() < deadline, f"{topic}: {available} of {expected} messages after {timeout_s} s"
        time.sleep(0.5)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "cardo-tests", "enable.auto.commit": False}
    )
    try:
        messages = []
        for partition, end in sorted(ends.items()):
            first = start.get(partition, 0)
            if end <= first:
                continue
            consumer.assign([TopicPartition(topic, partition, first)])
            while True:
                msg = consumer.poll(5)
                assert msg is not None, f"{topic}[{partition}] stopped before offset {end}"
                assert msg.error() is None, msg.error()
                messages.append(
                    (
                        partition,
                        json.loads(msg.key()) if msg.key() is not None else None,
                        json.loads(msg.value()) if msg.value() is not None else None,
                    )
                )
                if msg.offset() + 1 >= end:
                    break
        return messages
    finally:
        consumer.close()
