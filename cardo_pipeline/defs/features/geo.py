"""`features/borrowers_geo` and `features/collaterals_geo`: the curated borrowers and collaterals with their NUTS3,
NUTS2 and NUTS1 regions (`geo.enrich`), rebuilt whenever their curated parent changes (Dagster's eager condition,
as curated follows raw). No personal data: names and birth dates stay in curated. Glue only."""

from dataclasses import dataclass

import dagster as dg
import polars as pl

from cardo_pipeline.curate.merge_on_read import read_live
from cardo_pipeline.defs.automation import follows_upstream
from cardo_pipeline.defs.groups import FEATURES
from cardo_pipeline.defs.keys import curated_key, features_key, reference_key
from cardo_pipeline.defs.quality.pandera_checks import markdown_table, pandera_asset_check
from cardo_pipeline.defs.reference.assets import POSTCODES, REGIONS, write_table
from cardo_pipeline.defs.resources import LakeResource, QualityResource
from cardo_pipeline.geo.enrich import enrich_with_regions, match_rate
from cardo_pipeline.geo.models import enriched_model
from cardo_pipeline.geo.nuts import NUTS_VERSION
from cardo_pipeline.quality.validate import delta_source
from cardo_pipeline.tables import TABLES_BY_NAME, SourceTable

MATCH_RATE_CHECK = "postcode_match_rate"
SAMPLE_UNMATCHED = 20


@dataclass(frozen=True)
class GeoEnriched:
    table: SourceTable
    columns: tuple[str, ...]  # what the enriched table carries of the curated one (never personal data)

    @property
    def name(self) -> str:
        return f"{self.table.name}_geo"

    @property
    def key(self) -> dg.AssetKey:
        return features_key(self.name)


GEO_ENRICHED = (
    GeoEnriched(TABLES_BY_NAME["borrowers"], ("borrower_id", "borrower_type", "country_code", "postcode")),
    GeoEnriched(TABLES_BY_NAME["collaterals"], ("collateral_id", "loan_id", "collateral_type", "country_code",
                                                "postcode")),
)


def _reference(lake: LakeResource, name: str) -> pl.DataFrame:
    uri = lake.table(reference_key(name).path)
    frame = read_live(uri)
    if frame is None:
        raise dg.Failure(f"{reference_key(name).to_user_string()} is not materialized: materialize the reference "
                         "group first (job refresh_reference)")
    return frame


def build_geo_enriched(spec: GeoEnriched) -> dg.Definitions:
    model = enriched_model(f"{spec.table.name.title()}Geo", list(spec.table.primary_key))

    @dg.asset(
        key=spec.key, group_name=FEATURES, kinds={"delta", "polars"},
        deps=[curated_key(spec.table), reference_key(REGIONS), reference_key(POSTCODES)],
        automation_condition=follows_upstream(), tags={"cardo/layer": "features"},
        description=(f"`curated/{spec.table.name}` ({', '.join(spec.columns)}) with its NUTS3, NUTS2 and NUTS1 codes "
                     "and names (NUTS 2024) from its postcode; a row whose postcode does not match is kept with null "
                     "codes and `unmatched_reason`."),
    )
    def enriched(lake: LakeResource) -> dg.MaterializeResult:
        curated = read_live(lake.table(spec.table.layout.curated), columns=list(spec.columns))
        if curated is None:
            curated = pl.DataFrame(schema={c: pl.String for c in spec.columns})
        frame = enrich_with_regions(curated, _reference(lake, REGIONS), _reference(lake, POSTCODES))
        version = write_table(frame.sort(list(spec.table.primary_key)), lake.table(spec.key.path))
        reasons = frame.filter(pl.col("nuts3_code").is_null()).group_by("unmatched_reason").len()
        return dg.MaterializeResult(metadata={
            "dagster/row_count": frame.height, "delta_version": version, "nuts_version": NUTS_VERSION,
            "match_rate": round(match_rate(frame), 5),
            "unmatched_by_reason": dg.MetadataValue.json(dict(reasons.iter_rows())),
            "rows_per_country": dg.MetadataValue.json(dict(frame.group_by("country_code").len().sort(
                "country_code").iter_rows())),
        })

    @dg.asset_check(asset=spec.key, name=MATCH_RATE_CHECK, blocking=True,
                    description="The share of rows whose postcode found its NUTS3 region is at least the quality "
                                "resource's geo_match_rate_min (0.99 by default); fails with a sample of the others.")
    def postcode_match_rate(lake: LakeResource, quality: QualityResource) -> dg.AssetCheckResult:
        frame = pl.read_delta(lake.table(spec.key.path), columns=[*spec.table.primary_key, "country_code",
                                                                  "postcode", "nuts3_code", "unmatched_reason"])
        rate = match_rate(frame)
        unmatched = frame.filter(pl.col("nuts3_code").is_null())
        sample = unmatched.select(*spec.table.primary_key, "country_code", "postcode", "unmatched_reason")
        return dg.AssetCheckResult(passed=rate >= quality.geo_match_rate_min, metadata={
            "match_rate": round(rate, 5), "threshold": quality.geo_match_rate_min, "rows": frame.height,
            "unmatched": unmatched.height,
            "unmatched_sample": dg.MetadataValue.md(markdown_table(sample.head(SAMPLE_UNMATCHED).to_dicts())
                                                    if unmatched.height else "none"),
        })

    schema_check = pandera_asset_check(
        spec.key, model, lambda context: delta_source(context.resources.lake.table(spec.key.path)),
        name="pandera_schema", required_resource_keys={"lake"})
    return dg.Definitions(assets=[enriched], asset_checks=[postcode_match_rate, schema_check])


GEO_FEATURE_DEFS = dg.Definitions.merge(*(build_geo_enriched(spec) for spec in GEO_ENRICHED))
