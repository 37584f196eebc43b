"""A plain-Python oracle of the apply-changes contract (ARCHITECTURE section 5), independent of `curate.apply`.

It takes every raw event ever delivered (dicts in the `raw_arrow_schema` layout, any order, duplicates allowed),
keeps one copy of each, sorts them by sequence (source_lsn, offset) and replays them into dictionaries. What it
returns has exactly the shape of `current_rows` / `history_rows`.

A duplicate is the same Kafka message delivered again, so events are told apart by their Kafka position
(topic, partition, offset). Sequence alone would not do: the delete and the insert of a primary-key change share an
LSN, sit on different partitions and may well have the same offset there.
"""

from __future__ import annotations

from typing import Any

from cardo_pipeline.tables import SourceTable

UPSERTS = ("c", "r", "u")


def replay(events: list[dict[str, Any]], table: SourceTable) -> tuple[list[dict], list[dict]]:
    """(current rows, history rows) after all `events`, as `current_rows` and `history_rows` return them."""
    columns, primary_key = table.column_names, table.primary_key
    unique = {(e["topic"], e["partition"], e["offset"]): e for e in events if e["op"] != "tombstone"}
    ordered = sorted(unique.values(), key=lambda e: (e["source_lsn"], e["offset"]))

    live: dict[tuple, dict] = {}  # key -> the row as it stands
    open_versions: dict[tuple, dict] = {}  # key -> its history row with valid_to still null
    history: list[dict] = []
    for event in ordered:
        op = event["op"]
        if op == "t":
            ended = list(open_versions)
        else:
            image = event["before"] if op == "d" else event["after"]
            ended = [tuple(image[c] for c in primary_key)]
        for key in ended:  # the event ends the version it follows (a truncate ends all of them)
            if (version := open_versions.pop(key, None)) is not None:
                version.update(valid_to_lsn=event["source_lsn"], valid_to_offset=event["offset"], is_current=False)

        if op == "t":
            live.clear()
        elif op == "d":
            live.pop(ended[0], None)
        elif op in UPSERTS:
            key = ended[0]
            previous = live.get(key, {})  # no live version: unchanged TOAST values resolve to null
            unchanged = set(event["unchanged_toast"] or ())
            row = {c: previous.get(c) if c in unchanged else event["after"][c] for c in columns}
            live[key] = row
            version = {
                **row,
                "valid_from_lsn": event["source_lsn"], "valid_from_offset": event["offset"],
                "valid_to_lsn": None, "valid_to_offset": None, "is_current": True,
            }
            history.append(version)
            open_versions[key] = version
        else:
            raise ValueError(f"unknown op {op!r}")

    def by_key(row: dict) -> tuple:
        return tuple(row[c] for c in primary_key)

    current = sorted(live.values(), key=by_key)
    history.sort(key=lambda v: (by_key(v), v["valid_from_lsn"], v["valid_from_offset"]))
    return current, history
