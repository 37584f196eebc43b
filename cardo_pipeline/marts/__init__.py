"""The portfolio marts' Python side: DuckDB with the Delta and Iceberg extensions from wheels, and the marts' charts.
The marts themselves are SQL in dbt_project/; their Dagster assets are in defs/marts/."""

import os
from pathlib import Path


def dbt_project_dir() -> Path:
    """The dbt project: CARDO_DBT_PROJECT_DIR, else the checkout's `dbt_project/` beside the package (an editable
    install), else `./dbt_project` (an image installs the package into site-packages and copies the project to its
    working directory)."""
    configured = os.environ.get("CARDO_DBT_PROJECT_DIR")
    if configured:
        return Path(configured)
    beside = Path(__file__).resolve().parents[2] / "dbt_project"
    return beside if (beside / "dbt_project.yml").exists() else Path.cwd() / "dbt_project"
