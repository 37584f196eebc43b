"""`marts/*` and `staging/*`: the dbt project (dbt_project/) as Dagster assets. Each dbt source is the Dagster asset of
the same key (source `curated`, table `loans` is `curated/loans`), so the lineage runs from the Kafka topics to the
marts in one graph; dbt's tests are the assets' checks. The marts' materializations carry their charts. Glue only:
the SQL is in dbt_project/, the charts in cardo_pipeline.marts.plots."""

import fcntl
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from cardo_pipeline.defs.groups import MARTS
from cardo_pipeline.defs.resources import LakeResource, MartsResource, dbt_cli
from cardo_pipeline.marts import dbt_project_dir

MARTS_JOB = "build_marts"
# One DuckDB file takes one writer: the asset serialises its builds with a file lock, and the pool shows that
# in the UI (and limits them wherever the instance sets a pool limit).
MARTS_POOL = "marts_duckdb"
_PROJECT_INPUTS = ("models", "macros", "tests", "dbt_project.yml", "profiles.yml")


def _newest_input(project_dir: Path) -> float:
    newest = 0.0
    for name in _PROJECT_INPUTS:
        path = project_dir / name
        files = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        # folders too: deleting or renaming a model changes its folder's time, not any remaining file's
        newest = max([newest, path.stat().st_mtime if path.exists() else 0.0, *(f.stat().st_mtime for f in files)])
    return newest


def dbt_project() -> DbtProject:
    """The dbt project with a manifest as new as its files: `dbt parse` runs when the manifest is missing (a clean
    checkout) or older than a model, macro, test or project file, so the assets always match the SQL."""
    project_dir = dbt_project_dir()
    project = DbtProject(project_dir=project_dir, profiles_dir=project_dir)
    manifest = project.manifest_path

    def stale() -> bool:
        return not manifest.exists() or manifest.stat().st_mtime < _newest_input(project_dir)

    if stale():
        manifest.parent.mkdir(parents=True, exist_ok=True)
        # one parse at a time (dagster dev's code server and a test may load the definitions together)
        with open(manifest.parent / ".cardo-parse.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if stale():
                # dagster-dbt's own preparer runs the `dbt` on PATH, which a venv's interpreter run directly lacks
                dbt_cli().cli(["parse", "--quiet"], target_path=project.target_path).wait()
    return project


class CardoDbtTranslator(DagsterDbtTranslator):
    """Sources keep dagster-dbt's key (source name, table name: the upstream asset's key); staging views are
    `staging/<model>`, marts `marts/<model>`; all in the marts group."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] != "model":
            return super().get_asset_key(dbt_resource_props)
        layer = "staging" if "staging" in dbt_resource_props["fqn"] else MARTS
        return dg.AssetKey([layer, dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] != "model":
            return super().get_group_name(dbt_resource_props)
        return MARTS


def build_marts_defs() -> dg.Definitions:
    project = dbt_project()
    translator = CardoDbtTranslator()

    @dbt_assets(manifest=project.manifest_path, project=project, dagster_dbt_translator=translator, name="cardo_marts",
                pool=MARTS_POOL)
    def cardo_marts(context: dg.AssetExecutionContext, dbt: DbtCliResource, lake: LakeResource,
                    marts: MartsResource):
        from cardo_pipeline.marts.duckdb import connect
        from cardo_pipeline.marts.plots import mart_charts, row_counts

        _require_sources(context, lake)
        database = marts.database_path()
        database.parent.mkdir(parents=True, exist_ok=True)
        # DuckDB takes one writer per file: a second run waits here instead of failing on the file's lock.
        with open(f"{database}.build-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            invocation = dbt.cli(["build", "--vars", json.dumps(marts.dbt_vars(lake.root_uri()))], context=context,
                                 raise_on_error=False)
            # Held until dbt is done: the charts and row counts read the DuckDB file, which dbt holds while it runs.
            # A failed test still yields every event (its failed check, the models built before it); the step
            # fails after them.
            events = list(invocation.stream())
            built = {event.output_name for event in events if isinstance(event, dg.Output)}
            names = {output: context.assets_def.keys_by_output_name[output].path[-1] for output in built}
            with connect(database, read_only=True) as conn:
                counts = row_counts(conn, set(names.values()))
                charts = mart_charts(conn, set(names.values()))
        for event in events:
            if isinstance(event, dg.Output):
                name = names[event.output_name]
                extra: dict[str, Any] = {"duckdb_database": str(database)}
                if name in counts:
                    extra["dagster/row_count"] = counts[name]
                extra |= {title: dg.MetadataValue.md(image) for title, image in charts.get(name, {}).items()}
                event = event.with_metadata({**event.metadata, **extra})
            yield event
        error = invocation.get_error()
        if error is not None:
            raise error

    job = dg.define_asset_job(MARTS_JOB, selection=dg.AssetSelection.assets(cardo_marts),
                              description="Build the dbt marts (staging views, marts, their tests) from the lake.")
    return dg.Definitions(assets=[cardo_marts], jobs=[job])


def _require_sources(context: dg.AssetExecutionContext, lake: LakeResource) -> None:
    """The Delta tables the selected models read must exist: otherwise fail naming the assets to materialize first
    (dbt would only say that delta_scan found no table)."""
    from cardo_pipeline.ingest.delta_log import load_table

    own, deps = set(context.assets_def.keys), context.assets_def.asset_deps
    upstream, todo, seen = set(), list(context.selected_asset_keys), set()
    while todo:  # through the dbt models the selection reads, which dbt reads in place (views, tables)
        key = todo.pop()
        for dep in deps.get(key, ()):
            if dep not in own:
                upstream.add(dep)
            elif dep not in seen:
                seen.add(dep)
                todo.append(dep)
    missing = sorted(key.to_user_string() for key in upstream if load_table(lake.table(key.path)) is None)
    if missing:
        raise dg.Failure(f"the marts read {', '.join(missing)}, not materialized yet: materialize them first "
                         "(make demo does it all; the features and scores through the job monthly_features_and_scores)")
