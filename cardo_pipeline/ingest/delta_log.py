"""Append-only Delta tables that carry Kafka offsets in the same commit as the data (delta-rs app transactions).

Each (topic, partition) is an application id whose version is the next offset to read: the commit that adds a
batch's rows also moves its offsets, atomically, so a crash anywhere either keeps both or neither.
Writes go through the snapshot the offsets were read from, so a second writer that read the same offsets
fails its commit (delta-rs rejects a concurrent commit of the same app id) instead of duplicating the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError

# Change data feed: the curated tables read each batch of new raw rows from it.
_NEW_TABLE_CONFIGURATION = {"delta.appendOnly": "true", "delta.enableChangeDataFeed": "true"}


def offsets_app_id(topic: str, partition: int) -> str:
    return f"kafka/{topic}/{partition}"


def load_table(uri: str) -> DeltaTable | None:
    if "://" not in uri and not (Path(uri) / "_delta_log").exists():
        return None
    try:
        return DeltaTable(uri)
    except TableNotFoundError:
        return None


class OffsetTrackedTable:
    """A Delta table at `uri` whose commits record the next Kafka offset per (topic, partition)."""

    def __init__(self, uri: str):
        self.uri = uri
        self._snapshot = load_table(uri)

    def version(self) -> int | None:
        return None if self._snapshot is None else self._snapshot.version()

    def row_count(self) -> int:
        return 0 if self._snapshot is None else self._snapshot.count()

    def schema(self) -> pa.Schema | None:
        return None if self._snapshot is None else pa.schema(self._snapshot.schema().to_arrow())

    def ensure_exists(self, schema: pa.Schema) -> None:
        """Create the table empty, so that writers of different partitions can start appending at once (two
        writers creating the same table would conflict)."""
        if self._snapshot is None and load_table(self.uri) is None:
            write_deltalake(self.uri, schema.empty_table(), mode="append", configuration=_NEW_TABLE_CONFIGURATION)
        self._snapshot = DeltaTable(self.uri)

    def next_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """Where reading resumes: the offsets committed with the data (0 for a partition never seen)."""
        if self._snapshot is None:
            return {p: 0 for p in partitions}
        return {p: self._snapshot.transaction_version(offsets_app_id(topic, p)) or 0 for p in partitions}

    def append(self, rows: pa.Table, topic: str, next_offsets: dict[int, int], metadata: dict[str, str]) -> int:
        """Append rows and move the offsets in one commit (also when `rows` is empty); return the new version."""
        write_deltalake(
            self._snapshot if self._snapshot is not None else self.uri,
            rows,
            mode="append",
            schema_mode="merge",  # a column added at the source appears as a new nullable column
            configuration=None if self._snapshot is not None else _NEW_TABLE_CONFIGURATION,
            commit_properties=CommitProperties(
                app_transactions=[
                    Transaction(app_id=offsets_app_id(topic, p), version=o) for p, o in sorted(next_offsets.items())
                ],
                custom_metadata={"cardo.kafka_offsets": json.dumps({topic: next_offsets}), **metadata},
            ),
        )
        if self._snapshot is None:
            self._snapshot = DeltaTable(self.uri)
        return self._snapshot.version()
