"""Read-only views of Kafka topics: partitions and end offsets, without consuming or committing anything.

Used by the topic observations now and by the offsets sensor; never joins a consumer group.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition


class KafkaUnavailable(RuntimeError):
    """The broker did not answer in time; the message names it and says how to start the local one."""


def _consumer(bootstrap: str, timeout_s: float) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "cardo-offsets-reader",  # required by librdkafka; never used: no subscribe, no commit
            "enable.auto.commit": False,
            "socket.timeout.ms": int(timeout_s * 1000),
            "session.timeout.ms": 6000,
        }
    )


def end_offsets(bootstrap: str, topics: Iterable[str], timeout_s: float = 5.0) -> dict[str, dict[int, int]]:
    """{topic: {partition: end offset}}; a topic that does not exist yet maps to {}."""
    consumer = _consumer(bootstrap, timeout_s)
    try:
        try:
            metadata = consumer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"Kafka at {bootstrap} did not answer within {timeout_s:.0f} s ({exc.args[0]}); "
                "locally start it with `cardo stack up`"
            ) from None
        result: dict[str, dict[int, int]] = {}
        for topic in topics:
            partitions = metadata.topics.get(topic)
            if partitions is None or partitions.error is not None:
                result[topic] = {}
                continue
            result[topic] = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)[
                    1
                ]
                for p in sorted(partitions.partitions)
            }
        return result
    finally:
        consumer.close()
