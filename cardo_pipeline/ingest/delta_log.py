"""Append-only Delta tables that carry Kafka offsets in the same commit as the data (delta-rs app transactions).

Each (topic, partition) is an application id whose version is the next offset to read: the commit that adds a
batch's rows also moves its offsets, atomically, so a crash anywhere either keeps both or neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError


def offsets_app_id(topic: str, partition: int) -> str:
    return f"kafka/{topic}/{partition}"


@dataclass
class OffsetTrackedTable:
    """A Delta table at `uri` whose commits record the next Kafka offset per (topic, partition)."""

    uri: str

    def _table(self) -> DeltaTable | None:
        if self.uri.startswith("/") and not (Path(self.uri) / "_delta_log").exists():
            return None
        try:
            return DeltaTable(self.uri)
        except TableNotFoundError:
            return None

    def version(self) -> int | None:
        table = self._table()
        return None if table is None else table.version()

    def next_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """Where reading resumes: the offsets committed with the data (0 for a partition never seen)."""
        table = self._table()
        if table is None:
            return {p: 0 for p in partitions}
        return {p: table.transaction_version(offsets_app_id(topic, p)) or 0 for p in partitions}

    def append(self, rows: pa.Table, topic: str, next_offsets: dict[int, int], metadata: dict) -> int:
        """Append rows and move the offsets in one commit (also when `rows` is empty); return the new version."""
        write_deltalake(
            self.uri,
            rows,
            mode="append",
            schema_mode="merge",  # a column added at the source appears as a new nullable column
            configuration={"delta.appendOnly": "true"},
            commit_properties=CommitProperties(
                app_transactions=[
                    Transaction(app_id=offsets_app_id(topic, p), version=o)
                    for p, o in sorted(next_offsets.items())
                ],
                custom_metadata={"cardo.kafka_offsets": json.dumps({topic: next_offsets}), **metadata},
            ),
        )
        return DeltaTable(self.uri).version()

    def read(self) -> pa.Table:
        table = self._table()
        return pa.table({}) if table is None else table.to_pyarrow_table()
