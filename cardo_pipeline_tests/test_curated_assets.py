"""The curated and Iceberg assets in a Dagster run against the real broker: a simulated book goes Kafka -> raw ->
curated -> Iceberg, and for every source table the curated tables and the mirror equal the oracle's replay of
what raw holds; the blocking checks pass, the metadata tells what the batch did, a second run applies nothing."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from cardo_pipeline.curate.oracle import replay
from cardo_pipeline.defs.curated.assets import CURATED_ASSETS
from cardo_pipeline.defs.curated.checks import CURATED_CHECKS
from cardo_pipeline.defs.iceberg.assets import ICEBERG_DEFS
from cardo_pipeline.defs.keys import curated_history_key, curated_key, iceberg_key
from cardo_pipeline.defs.raw.assets import DEAD_LETTER_SPEC, RAW_ASSETS
from cardo_pipeline.defs.resources import (
    EngineResource,
    IcebergResource,
    KafkaResource,
    LakeResource,
    QualityResource,
    ServicingDatabase,
)
from cardo_pipeline.tables import SOURCE_TABLES
from cardo_pipeline_tests.raw_helpers import fresh_prefix, produce_book, read_table

pytestmark = pytest.mark.stack


def _materialization(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_a_book_goes_from_kafka_through_raw_to_curated_as_the_oracle_says(kafka_bootstrap: str, tmp_path: Path,
                                                                           engine_name: str) -> None:
    engine = engine_name
    prefix = fresh_prefix(f"curated{engine}")
    produce_book(kafka_bootstrap, prefix, loans=40, months=6)
    iceberg = IcebergResource(catalog_uri=f"sqlite:///{tmp_path}/iceberg/catalog.db",
                              warehouse=str(tmp_path / "iceberg" / "warehouse"))
    definitions = dg.Definitions.merge(ICEBERG_DEFS, dg.Definitions(
        assets=[*RAW_ASSETS, DEAD_LETTER_SPEC, *CURATED_ASSETS], asset_checks=CURATED_CHECKS,
        resources={"kafka": KafkaResource(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix),
                   "lake": LakeResource(root=str(tmp_path)), "iceberg": iceberg,
                   # these topics have no source database: reconciliation is switched off (and so skipped)
                   "servicing_db": ServicingDatabase(), "quality": QualityResource(reconcile_with_source=False),
                   "engine": EngineResource(default=engine)},
    ))
    job = definitions.resolve_implicit_global_asset_job_def()
    selection = ([a.key for a in RAW_ASSETS] + [k for a in CURATED_ASSETS for k in a.keys]
                 + [iceberg_key(t) for t in SOURCE_TABLES])
    first = job.execute_in_process(asset_selection=selection)
    assert first.success
    checks = {(c.asset_key.to_user_string(), c.check_name): c.passed for c in first.get_asset_check_evaluations()}
    expected = {*((f"curated/{t.name}", "current_agrees_with_history") for t in SOURCE_TABLES),
                *((f"iceberg/{t.name}", "matches_delta") for t in SOURCE_TABLES),
                *((f"{layer}/{t.name}", "pandera_schema") for t in SOURCE_TABLES for layer in ("curated", "iceberg")),
                *((f"curated/{t.name}_history", name) for t in SOURCE_TABLES
                  for name in ("pandera_schema", "pandera_source_rules"))}
    assert set(checks) == expected and all(checks.values()), {k: v for k, v in checks.items() if not v}

    for table in SOURCE_TABLES:
        names = [c.name for c in table.columns]
        events = read_table(f"{tmp_path}/raw/{table.name}").to_pylist()
        expected_current, expected_history = replay(events, table)
        current = pl.read_delta(f"{tmp_path}/curated/{table.name}").select(names).sort(
            list(table.primary_key)).to_dicts()
        history = (pl.read_delta(f"{tmp_path}/curated/{table.name}_history").filter(~pl.col("is_deleted"))
                   .select([*names, "valid_from_lsn", "valid_from_offset", "valid_to_lsn", "valid_to_offset",
                            "is_current"])
                   .sort([*table.primary_key, "valid_from_lsn", "valid_from_offset"]).to_dicts())
        assert current == expected_current, table.name
        assert history == expected_history, table.name
        metadata = _materialization(first, curated_key(table))
        assert metadata["engine"] == engine
        assert metadata["events_applied"] == len(events)
        assert metadata["dagster/row_count"] == len(expected_current)
        assert metadata["data_files"] >= 1 and metadata["rows_marked_deleted"] >= 0
        assert metadata["rows_inserted"] == len(expected_current)  # a fresh table: every live row is new
        history_metadata = _materialization(first, curated_history_key(table))
        assert history_metadata["dagster/row_count"] >= len(expected_history)  # delete rows come on top
        mirrored = pl.from_arrow(iceberg.catalog().load_table(f"curated.{table.name}").scan().to_arrow())
        assert mirrored.select(names).sort(list(table.primary_key)).to_dicts() == expected_current, table.name
        assert _materialization(first, iceberg_key(table))["dagster/row_count"] == len(expected_current)

    loans = pl.read_delta(f"{tmp_path}/curated/loans")
    assert loans["servicer_notes"].str.contains("__debezium_unavailable_value").sum() == 0
    assert loans["servicer_notes"].str.len_bytes().max() > 2000  # TOASTed notes kept their values

    second = job.execute_in_process(asset_selection=selection)
    assert second.success
    assert all(_materialization(second, curated_key(t))["events_applied"] == 0 for t in SOURCE_TABLES)
