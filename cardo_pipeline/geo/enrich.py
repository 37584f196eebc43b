"""Borrowers and collaterals with their regions: the postcode in its country's form, joined to TERCET's NUTS3
code, and the NUTS3, NUTS2 and NUTS1 codes and names of NUTS 2024 (or the Statistical Regions of the EFTA and
candidate countries). A row that does not match is kept, with null codes and the reason; none is ever dropped.
"""

from __future__ import annotations

import polars as pl

from cardo_pipeline.geo.nuts import NUTS_VERSION
from cardo_pipeline.geo.postcodes import normalise_postcode

NO_POSTCODE = "no postcode"
COUNTRY_NOT_COVERED = "country not covered by TERCET"
POSTCODE_UNKNOWN = "postcode not in TERCET for its country"
GEO_COLUMNS = ["postcode_normalised", "nuts3_code", "nuts3_name", "nuts2_code", "nuts2_name", "nuts1_code",
               "nuts1_name", "nuts_version", "unmatched_reason"]


def enrich_with_regions(frame: pl.DataFrame, regions: pl.DataFrame, postcodes: pl.DataFrame) -> pl.DataFrame:
    """`frame` (with country_code and postcode) with the GEO_COLUMNS added, in its own row order."""
    covered = postcodes["country_code"].unique().implode()
    names = regions.select("code", "name")
    normalised = frame.with_columns(
        pl.struct("country_code", "postcode").map_elements(
            lambda r: normalise_postcode(r["country_code"], r["postcode"]), return_dtype=pl.String,
        ).alias("postcode_normalised"))
    joined = normalised.join(
        postcodes.rename({"postcode": "postcode_normalised"}), on=["country_code", "postcode_normalised"],
        how="left", maintain_order="left")
    for level, width in ((2, 4), (1, 3)):
        joined = joined.with_columns(pl.col("nuts3_code").str.slice(0, width).alias(f"nuts{level}_code"))
    for level in (3, 2, 1):
        joined = joined.join(names.rename({"code": f"nuts{level}_code", "name": f"nuts{level}_name"}),
                             on=f"nuts{level}_code", how="left", maintain_order="left")
    reason = (pl.when(pl.col("nuts3_code").is_not_null()).then(None)
              .when(pl.col("postcode_normalised").is_null()).then(pl.lit(NO_POSTCODE))
              .when(~pl.col("country_code").is_in(covered)).then(pl.lit(COUNTRY_NOT_COVERED))
              .otherwise(pl.lit(POSTCODE_UNKNOWN)))
    return joined.with_columns(pl.lit(NUTS_VERSION).alias("nuts_version"), reason.alias("unmatched_reason")).select(
        *frame.columns, *GEO_COLUMNS)


def match_rate(enriched: pl.DataFrame) -> float:
    return 1.0 if enriched.is_empty() else enriched["nuts3_code"].is_not_null().mean()
