"""The portfolio marts' Python side: DuckDB with the Delta and Iceberg extensions from wheels, and the marts' charts.
The marts themselves are SQL in dbt_project/; their Dagster assets are in defs/marts/."""

from pathlib import Path

# The dbt project lives beside the package in a checkout (and in the image, issue 19), not inside it.
DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"
