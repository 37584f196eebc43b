"""`cardo replay FILE --lake DIR`: the raw writer fed from a file of Debezium messages instead of Kafka.

One Kafka message value per line, as a console consumer prints it (`null` for a tombstone). The table of each
line comes from its `source.table`; a tombstone belongs to the delete just before it. The file acts as a topic
with one partition whose offsets are line numbers, so replaying a file twice lands nothing twice; lines that
cannot be attributed to a table go to the dead-letter table, never to an exception.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from cardo_pipeline.cdc.arrow_types import DEAD_LETTER_SCHEMA
from cardo_pipeline.cdc.decode import KafkaRecord, decode_batch
from cardo_pipeline.ingest.delta_log import OffsetTrackedTable
from cardo_pipeline.tables import DEAD_LETTER_PATH, TABLES_BY_NAME, lake_uri

_TABLE_FIELD = re.compile(rb'"table"\s*:\s*"([^"]+)"')


@dataclass
class ReplayReport:
    lines: int = 0
    landed: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    skipped_already_landed: int = 0


def _table_of(value: bytes) -> str | None:
    """The source.table of a message, read cheaply; the decoder validates it against the table properly."""
    try:
        source = json.loads(value).get("payload", {}).get("source", {})
        return source.get("table") if isinstance(source, dict) else None
    except (ValueError, AttributeError):
        match = _TABLE_FIELD.search(value)
        return match.group(1).decode() if match else None


def replay_file(path: Path, lake_dir: Path, batch_lines: int = 50_000) -> ReplayReport:
    topic = f"file:{path.resolve()}"
    raw_tables = {name: OffsetTrackedTable(lake_uri(str(lake_dir), table.layout.raw))
                  for name, table in TABLES_BY_NAME.items()}
    dead_letter = OffsetTrackedTable(lake_uri(str(lake_dir), DEAD_LETTER_PATH))
    done = {name: t.next_offsets(topic, [0])[0] for name, t in raw_tables.items()}
    dead_done = dead_letter.next_offsets(topic, [0])[0]
    report = ReplayReport()
    by_table: dict[str, list[KafkaRecord]] = defaultdict(list)
    unattributed: list[tuple[int, bytes, str]] = []
    previous_table: str | None = None
    with open(path, "rb") as lines:
        for number, line in enumerate(lines):
            report.lines += 1
            value = line.rstrip(b"\r\n")
            if value.strip() == b"null":
                table, value = previous_table, None
            else:
                table = _table_of(value)
                previous_table = table
            if table not in TABLES_BY_NAME:
                unattributed.append((number, line, f"no known source.table in line {number + 1}"))
                continue
            if number < done[table]:
                report.skipped_already_landed += 1
                continue
            by_table[table].append(KafkaRecord(topic, 0, number, None, value, -1))
    now = datetime.now(UTC)
    dead_parts = [
        pa.table(
            {"topic": [topic] * len(unattributed), "partition": [0] * len(unattributed),
             "offset": [n for n, _, _ in unattributed], "key": [None] * len(unattributed),
             "value": [v for _, v, _ in unattributed], "error": [e for _, _, e in unattributed],
             "dead_lettered_at": [now] * len(unattributed)},
            schema=DEAD_LETTER_SCHEMA,
        ).filter(pa.array([n >= dead_done for n, _, _ in unattributed], pa.bool_()))
    ]
    for table, records in sorted(by_table.items()):
        for start in range(0, len(records), batch_lines):
            chunk = records[start : start + batch_lines]
            decoded = decode_batch(chunk, TABLES_BY_NAME[table], ingested_at=now)
            dead_parts.append(decoded.dead_letters.filter(pa.array(
                [o >= dead_done for o in decoded.dead_letters["offset"].to_pylist()], pa.bool_())))
            raw_tables[table].append(decoded.rows, topic, {0: chunk[-1].offset + 1}, {"cardo.source_file": str(path)})
            report.landed[table] = report.landed.get(table, 0) + decoded.rows.num_rows
    dead = pa.concat_tables(dead_parts)
    report.dead_lettered = dead.num_rows
    if dead.num_rows:
        dead_letter.append(dead, topic, {0: report.lines}, {"cardo.source_file": str(path)})
    return report

