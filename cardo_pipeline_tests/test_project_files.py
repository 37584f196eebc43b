"""Project files that users and deployments rely on stay consistent with the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cardo_pipeline.tables import SOURCE_TABLES

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_dbt_project_parses(tmp_path: Path) -> None:
    dbt = Path(sys.executable).parent / "dbt"
    result = subprocess.run(
        [str(dbt), "parse", "--profiles-dir", ".", "--target-path", str(tmp_path / "target")],
        cwd=PROJECT_ROOT / "dbt_project",
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": f"{dbt.parent}:/usr/bin:/bin", "CARDO_HOME": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout[-2000:]


def test_connector_configs_capture_every_source_table() -> None:
    for config in (PROJECT_ROOT / "deploy/k8s/debezium-connector.yaml",):
        text = config.read_text()
        for table in SOURCE_TABLES:
            assert f"public.{table.name}" in text, f"{config.name} does not capture {table.name}"
    local = (PROJECT_ROOT / "deploy/connect/servicing-postgres.properties").read_text()
    assert "table.include.list=${table_include_list}" in local  # filled from the registry at `stack up`
