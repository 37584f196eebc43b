"""The marts' setup without services: DuckDB finds its extensions in the installed wheels, a bad LGD names the
field, and building the marts before their sources exist fails saying which assets to materialize."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cardo_pipeline.defs.marts.assets import MARTS_JOB
from cardo_pipeline.defs.resources import MartsResource
from cardo_pipeline.marts.duckdb import EXTENSIONS, connect, extension_directory
from cardo_pipeline.settings import ConfigError
from cardo_pipeline_tests.test_quality_checks import definitions


def test_duckdb_loads_delta_avro_and_iceberg_from_the_wheels_without_downloading() -> None:
    folder = extension_directory()
    assert (folder / f"v{duckdb.__version__}").is_dir()
    with connect() as conn:
        loaded = dict(conn.sql("select extension_name, install_path from duckdb_extensions() where loaded").fetchall())
        assert conn.sql("select current_setting('autoinstall_known_extensions')").fetchone()[0] is False
    for name in EXTENSIONS:
        assert loaded[name].startswith(str(folder)), (name, loaded[name])


def test_an_lgd_outside_zero_to_one_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"marts\.lgd must be a share between 0 and 1, got 1\.5"):
        MartsResource(database=str(tmp_path / "m.duckdb"), lgd=1.5).dbt_vars(str(tmp_path))
    assert MartsResource(database=str(tmp_path / "m.duckdb")).dbt_vars("/lake") == {
        "lake_root": "/lake", "marts_database": str(tmp_path / "m.duckdb"), "lgd": 0.45}


def test_building_the_marts_before_their_sources_fails_naming_them(tmp_path: Path) -> None:
    code_location = definitions(tmp_path, "127.0.0.1:9", "servicing", "host=127.0.0.1 port=9")
    with dg.instance_for_test() as instance:
        result = code_location.resolve_job_def(MARTS_JOB).execute_in_process(instance=instance,
                                                                             raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    for source in ("curated/loans", "features/loan_snapshots", "models/pd_scores", "reference/nuts_regions"):
        assert source in message, message
    assert not (tmp_path / "marts.duckdb").exists()
