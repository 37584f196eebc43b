"""Pandera models of the geo tables (`nuts`, `postcodes`, `enrich`), all ERROR: reference data that breaks them
would put loans in the wrong region, so what is built on them waits."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from cardo_pipeline.geo.enrich import GEO_COLUMNS
from cardo_pipeline.geo.nuts import NUTS, NUTS_VERSION, STATISTICAL_REGIONS, TYPOLOGIES
from cardo_pipeline.quality.models import Severity, model, row_check, table_check

NUTS_CODE = r"^[A-Z]{2}[0-9A-Z]{0,3}$"
NUTS3_CODE = r"^[A-Z]{2}[0-9A-Z]{3}$"


def nuts_regions_model() -> pa.DataFrameSchema:
    code, level, parent = pl.col("code"), pl.col("level"), pl.col("parent_code")
    return model(
        "NutsRegions",
        {
            "code": pa.Column(pl.String, checks=pa.Check.str_matches(NUTS_CODE)),
            "level": pa.Column(pl.Int8, checks=pa.Check.in_range(0, 3)),
            "name": pa.Column(pl.String),
            "parent_code": pa.Column(pl.String, nullable=True),
            "country_code": pa.Column(pl.String, checks=pa.Check.str_matches(r"^[A-Z]{2}$")),
            "classification": pa.Column(pl.String, checks=pa.Check.isin([NUTS, STATISTICAL_REGIONS])),
            **{name: pa.Column(pl.String, nullable=True) for name in TYPOLOGIES.values()},
        },
        checks=[
            row_check("a code has level + 2 characters", code.str.len_chars() == level.cast(pl.UInt32) + 2),
            row_check("a region's parent is its code less one character, none for a country", pl.when(level == 0)
                      .then(parent.is_null()).otherwise(parent == code.str.slice(0, code.str.len_chars() - 1))),
            row_check("a code starts with its country", code.str.starts_with(pl.col("country_code"))),
            table_check("every parent is a region", parent.is_null() | parent.is_in(code.implode())),
        ],
        unique=["code"],
        severity=Severity.ERROR,
        key=["code"],
        description=f"NUTS {NUTS_VERSION} regions, levels 0 to 3, each with its parent up to its country.",
    )


def nuts_crosswalk_model() -> pa.DataFrameSchema:
    return model(
        "NutsCrosswalk",
        {
            "country_code": pa.Column(pl.String),
            "code_2021": pa.Column(pl.String, nullable=True, checks=pa.Check.str_matches(NUTS_CODE)),
            "code_2024": pa.Column(pl.String, nullable=True, checks=pa.Check.str_matches(NUTS_CODE)),
            "level": pa.Column(pl.Int8, checks=pa.Check.in_range(0, 3)),
            "change": pa.Column(pl.String, nullable=True),
        },
        checks=[row_check("a code on one side at least", pl.col("code_2021").is_not_null()
                          | pl.col("code_2024").is_not_null())],
        unique=["code_2021", "code_2024"],
        severity=Severity.ERROR,
        key=["code_2021", "code_2024"],
        description="The official NUTS 2021 -> NUTS 2024 crosswalk.",
    )


def postcode_nuts3_model() -> pa.DataFrameSchema:
    return model(
        "PostcodeNuts3",
        {
            "country_code": pa.Column(pl.String, checks=pa.Check.str_matches(r"^[A-Z]{2}$")),
            "postcode": pa.Column(pl.String, checks=pa.Check.str_length(min_value=1)),
            "nuts3_code": pa.Column(pl.String, checks=pa.Check.str_matches(NUTS3_CODE)),
        },
        checks=[row_check("a NUTS3 code in its postcode's country",
                          pl.col("nuts3_code").str.starts_with(pl.col("country_code")))],
        unique=["country_code", "postcode"],
        severity=Severity.ERROR,
        key=["country_code", "postcode"],
        description=f"TERCET postcode -> NUTS3 (NUTS {NUTS_VERSION}): one region per postcode.",
    )


def enriched_model(name: str, key: list[str]) -> pa.DataFrameSchema:
    nuts3 = pl.col("nuts3_code")
    return model(
        name,
        {
            **{k: pa.Column(pl.Int64) for k in key},
            "country_code": pa.Column(pl.String, nullable=True),
            "postcode": pa.Column(pl.String, nullable=True),
            **{c: pa.Column(pl.String, nullable=True) for c in GEO_COLUMNS if c != "nuts_version"},
            "nuts_version": pa.Column(pl.String, checks=pa.Check.eq(NUTS_VERSION)),
        },
        checks=[
            row_check("a row has a NUTS3 code or the reason it has none",
                      nuts3.is_null() != pl.col("unmatched_reason").is_null()),
            row_check("NUTS2 and NUTS1 are the NUTS3 code's parents", nuts3.is_null() | (
                (pl.col("nuts2_code") == nuts3.str.slice(0, 4)) & (pl.col("nuts1_code") == nuts3.str.slice(0, 3)))),
            row_check("a matched row has its regions' names", nuts3.is_null() | pl.all_horizontal(
                [pl.col(f"nuts{level}_name").is_not_null() for level in (1, 2, 3)])),
        ],
        unique=key,
        severity=Severity.ERROR,
        key=key,
        description="Rows with their NUTS3, NUTS2 and NUTS1 regions; an unmatched row kept with its reason.",
    )
