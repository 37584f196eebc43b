"""A ChangeSink that writes Debezium envelopes straight to Kafka, for bulk loads and benchmarks.

What belongs here: producing `cardo_pipeline.cdc.encode` messages with confluent-kafka so that the topics
`<prefix>.public.<table>` look as if Debezium had captured the same transactions from Postgres: same keys,
values, tombstones, partitions (Java's default partitioner for keyed messages) and per-partition order, minus
the cost of Postgres and Kafka Connect. The encoding itself lives in `cardo_pipeline.cdc.encode`.

Ground truth (`write_truth`) is not written anywhere: Debezium never publishes `simulator.loan_truth`, and the
Kafka path has no Postgres to keep it in. Runs that need the truth use `PostgresSink`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import date
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from cardo_pipeline.cdc.encode import DEFAULT_START_LSN, DEFAULT_START_TX_ID, EnvelopeEncoder
from cardo_pipeline.simulator.changes import Transaction

_log = logging.getLogger(__name__)  # librdkafka's own log lines, instead of raw stderr

# Throughput with flat memory: big lz4 batches, and a bounded local queue (produce blocks by polling when
# full) so millions of events never pile up in the client.
_PRODUCER_DEFAULTS: dict[str, Any] = {
    # librdkafka's consistent_random would hash keys with CRC32; Debezium's Java producer uses murmur2.
    "partitioner": "murmur2_random",
    "enable.idempotence": True,  # retries keep per-partition order, which the apply contract relies on
    "compression.type": "lz4",
    "linger.ms": 50,
    "batch.size": 4 * 1024 * 1024,
    "batch.num.messages": 20_000,
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 128 * 1024,
    "delivery.report.only.error": True,
}
_POLL_EVERY = 5_000  # serve delivery reports (errors only) regularly so they never accumulate


class KafkaEnvelopeSink:
    """Encode transactions as Debezium 3.7 would and produce them to `<topic_prefix>.public.<table>`.

    `write` returns the number of row changes written (tombstones are extra messages, not changes) and by
    default flushes before returning, raising KafkaException if any message could not be delivered, so a
    returned count is durable as with PostgresSink. `flush_every_write=False` keeps the pipeline full across
    the simulator's chunks (about 30% faster here); `close()` or the context manager then does the final
    flush. Messages carry Debezium's `__debezium.context.*` headers too. LSNs and txIds continue across
    `write` calls of one sink.
    """

    def __init__(
        self,
        bootstrap: str,
        topic_prefix: str = "servicing",
        *,
        database: str = "servicing",
        start_lsn: int = DEFAULT_START_LSN,
        start_tx_id: int = DEFAULT_START_TX_ID,
        producer_config: dict[str, Any] | None = None,
        flush_every_write: bool = True,
    ):
        self.encoder = EnvelopeEncoder(
            topic_prefix, database=database, start_lsn=start_lsn, start_tx_id=start_tx_id
        )
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, **_PRODUCER_DEFAULTS, "error_cb": self._on_client_error,
             "on_delivery": self._on_delivery, "logger": _log, **(producer_config or {})}
        )
        self._headers = [
            ("__debezium.context.connectorLogicalName", topic_prefix.encode()),
            ("__debezium.context.taskId", b"0"),
            ("__debezium.context.connectorName", b"postgresql"),
            ("__debezium.context.runId", str(uuid.uuid4()).encode()),
        ]
        self.flush_every_write = flush_every_write
        self._failures: list[str] = []
        self.messages_produced = 0

    def write(self, transactions: Iterable[Transaction]) -> int:
        produce = self._producer.produce
        poll = self._producer.poll
        headers = self._headers
        changes = 0
        for transaction in transactions:
            for topic, key, value in self.encoder.encode_transaction(transaction):
                while True:
                    try:
                        produce(topic, value, key, headers=headers)
                        break
                    except BufferError:  # the local queue is full: wait for the broker to take some
                        poll(0.05)
                self.messages_produced += 1
                if self.messages_produced % _POLL_EVERY == 0:
                    poll(0)
            changes += len(transaction.changes)
        if self.flush_every_write:
            self.flush()
        return changes

    def write_truth(self, rows: Iterable[tuple[int, date, float]]) -> None:
        """Ground truth has no Kafka topic (see the module docstring): accepted and dropped."""

    def flush(self, timeout: float = 300.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{remaining} messages not delivered"))
        if self._failures:
            failures, self._failures = self._failures, []
            raise KafkaException(
                KafkaError(KafkaError._FAIL, f"{len(failures)} messages failed, first: {failures[0]}")
            )

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> KafkaEnvelopeSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error}")

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():  # transient errors (a broker briefly unreachable) are retried by librdkafka
            self._failures.append(f"fatal client error: {error}")
