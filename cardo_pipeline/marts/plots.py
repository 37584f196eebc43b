"""The marts' charts as PNG bytes, for Dagster's markdown metadata: concentration by NUTS2, vintage curves, delinquency
buckets over time and the PD distribution. Each takes the mart's rows as a polars frame (as DuckDB returns them).

Drawn on matplotlib's Agg canvas directly, never through pyplot (see model/plots.py): no display, no global state.
"""

from __future__ import annotations

import base64
import io

import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

_SIZE_INCHES = (7.5, 4.5)
_DPI = 100
DPD_BUCKETS = (("current", "current"), ("1_29", "1-29"), ("30_59", "30-59"), ("60_89", "60-89"), ("90_plus", "90+"))


def _figure(title: str):
    figure = Figure(figsize=_SIZE_INCHES, dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return figure, axes


def _png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def markdown_image(title: str, png: bytes) -> str:
    """A PNG inline in markdown, which the Dagster UI renders as an image."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def concentration_png(concentration: pl.DataFrame) -> bytes:
    """The newest cutoff's NUTS2 regions by share of the performing balance: the top 10, then the rest as one bar."""
    level2 = concentration.filter(pl.col("nuts_level") == 2)
    cutoff = level2["cutoff_date"].max()
    rows = level2.filter(pl.col("cutoff_date") == cutoff).sort("balance_rank")
    top = rows.head(10)
    labels = [f"{code} {name[:28]}" for code, name in zip(top["region_code"], top["region_name"], strict=True)]
    shares = top["balance_share"].to_list()
    if rows.height > 10:
        labels.append(f"{rows.height - 10} other regions")
        shares.append(float(rows["balance_share"].tail(rows.height - 10).sum()))
    hhi = rows["hhi"][0] if rows.height else 0.0
    figure, axes = _figure(f"Share of performing balance by NUTS2 region, {cutoff} (HHI {hhi:.3f})")
    axes.barh(labels[::-1], shares[::-1], color="#4c72b0")
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel("share of balance")
    return _png(figure)


def vintage_curves_png(vintages: pl.DataFrame) -> bytes:
    """Cumulative default rate by months on book, one line per origination quarter."""
    figure, axes = _figure("Cumulative default rate by vintage (origination quarter)")
    for (vintage,), curve in vintages.sort("vintage", "months_on_book").group_by("vintage", maintain_order=True):
        axes.plot(curve["months_on_book"], curve["cumulative_default_rate"], linewidth=1.5, label=vintage)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel("months on book")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_ylabel("cumulative default rate (count)")
    if vintages.height:
        axes.legend(loc="upper left", fontsize="small", ncols=2)
    return _png(figure)


def delinquency_png(kpis: pl.DataFrame) -> bytes:
    """Each cutoff's delinquent share of the performing balance, stacked by days-past-due bucket (the current
    bucket is the rest up to 100%, left out so that the small delinquent shares stay readable)."""
    kpis = kpis.sort("cutoff_date")
    figure, axes = _figure("Delinquent share of performing balance by days past due")
    total = kpis["balance_outstanding"].to_numpy()
    bottom = None
    for column, label in DPD_BUCKETS[1:]:
        share = kpis[f"dpd_{column}_balance"].to_numpy() / total
        axes.bar(kpis["cutoff_date"].to_list(), share, width=20, bottom=bottom, label=f"{label} days")
        bottom = share if bottom is None else bottom + share
    if bottom is not None and len(bottom):
        axes.set_ylim(0, max(float(bottom.max()) * 1.25, 0.01))  # room for the legend above the bars
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylabel("share of balance")
    axes.legend(loc="upper left", fontsize="small", ncols=4)
    figure.autofmt_xdate()
    return _png(figure)


def pd_distribution_png(pds: pl.Series, cutoff) -> bytes:
    """The 12-month PD of the performing loans at a cutoff (log-spaced bins: PDs span orders of magnitude)."""
    import numpy as np

    values = pds.drop_nulls().to_numpy()
    figure, axes = _figure(f"12-month PD of performing loans, {cutoff} ({len(values):,} loans)")
    if len(values):
        low = max(float(values.min()), 1e-5)
        bins = np.geomspace(low, max(float(values.max()), low * 10), 40)
        axes.hist(np.clip(values, low, None), bins=bins, color="#dd8452")
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(PercentFormatter(1.0))
        axes.axvline(float(np.mean(values)), color="black", linestyle="--", linewidth=1,
                     label=f"mean {np.mean(values):.2%}")
        axes.legend(loc="upper right", fontsize="small")
    axes.set_xlabel("PD (log scale)")
    axes.set_ylabel("loans")
    return _png(figure)


def mart_charts(conn, built: set[str]) -> dict[str, dict[str, str]]:
    """Markdown images per mart, for the marts in `built` (model names), read from the marts' DuckDB."""
    charts: dict[str, dict[str, str]] = {}
    if "portfolio_kpis" in built:
        kpis = conn.sql("select * from portfolio_kpis order by cutoff_date").pl()
        if kpis.height:
            charts["portfolio_kpis"] = {"latest_cutoff": latest_kpis_markdown(kpis),
                                        "delinquency_over_time": markdown_image("delinquency buckets over time",
                                                                                delinquency_png(kpis))}
    if "concentration_by_region" in built:
        concentration = conn.sql("select * from concentration_by_region where nuts_level = 2").pl()
        if concentration.height:
            charts["concentration_by_region"] = {"concentration_nuts2": markdown_image(
                "concentration by NUTS2", concentration_png(concentration))}
    if "vintage_curves" in built:
        vintages = conn.sql("select * from vintage_curves").pl()
        charts["vintage_curves"] = {"vintage_curves": markdown_image("vintage curves", vintage_curves_png(vintages))}
    # one chart, shown on both marts that carry PDs
    with_pd = [mart for mart in ("pd_by_region", "loan_tape") if mart in built]
    if with_pd and "loan_tape" in tables(conn):
        cutoff = conn.sql("select max(cutoff_date) from loan_tape where pd_12m is not null").fetchone()[0]
        if cutoff is not None:
            pds = conn.sql("select pd_12m from loan_tape where is_performing and cutoff_date = ?",
                           params=[cutoff]).pl()["pd_12m"]
            image = markdown_image("PD distribution", pd_distribution_png(pds, cutoff))
            for mart in with_pd:
                charts.setdefault(mart, {})["pd_distribution"] = image
    return charts


def latest_kpis_markdown(kpis: pl.DataFrame) -> str:
    """The newest cutoff's KPIs as a two-column markdown table (what an analyst reads first)."""
    latest = kpis.sort("cutoff_date").row(-1, named=True)
    lines = ["| KPI | value |", "|---|---|"]
    for name, value in latest.items():
        if isinstance(value, float):
            shown = f"{value:,.2f}" if abs(value) >= 100 else f"{value:.6f}"
        else:
            shown = f"{value:,}" if isinstance(value, int) else str(value)
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)


def tables(conn) -> set[str]:
    """The tables and views in the marts' DuckDB."""
    return {name for (name,) in conn.sql("select table_name from information_schema.tables").fetchall()}


def row_counts(conn, models: set[str]) -> dict[str, int]:
    """Rows of each built model (views included) in the marts' DuckDB."""
    present = tables(conn)
    return {m: conn.sql(f'select count(*) from "{m}"').fetchone()[0] for m in sorted(models & present)}
