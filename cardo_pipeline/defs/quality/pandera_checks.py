"""One small factory: a Pandera model (`quality.models`) becomes a Dagster asset check on the table's asset.

ERROR models give blocking checks (a failure stops the assets downstream in the same run); WARN models report
only. The check's metadata is what a user needs in the UI: the model, rows checked, failures in all, per column and
per rule, and up to 20 failing rows as a Markdown table. Validation runs in bounded chunks (`quality.validate`).
"""


from collections.abc import Callable

import dagster as dg
import pandera.polars as pa

from cardo_pipeline.quality.models import Severity, severity_of
from cardo_pipeline.quality.validate import DEFAULT_CHUNK_ROWS, TableSource, ValidationReport, validate

SourceFor = Callable[[dg.AssetCheckExecutionContext], TableSource | None]  # None: the table does not exist yet
SEVERITIES = {Severity.ERROR: dg.AssetCheckSeverity.ERROR, Severity.WARN: dg.AssetCheckSeverity.WARN}


def pandera_asset_check(asset: dg.AssetKey, model: pa.DataFrameSchema, source: SourceFor, *, name: str,
                        required_resource_keys: set[str], chunk_rows: int = DEFAULT_CHUNK_ROWS,
                        rows: str = "the whole table") -> dg.AssetChecksDefinition:
    """`rows`: which rows `source` gives, in words, for the check's description."""
    severity = severity_of(model)

    @dg.asset_check(
        asset=asset, name=name, blocking=severity == Severity.ERROR, required_resource_keys=required_resource_keys,
        description=f"Pandera model `{model.name}` ({severity}) on {rows}: {model.description}",
        metadata={"pandera_model": model.name, "severity": str(severity)},
    )
    def pandera_check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        table = source(context)
        if table is None:
            return dg.AssetCheckResult(passed=True, severity=SEVERITIES[severity], metadata={
                "model": model.name, "rows_checked": 0, "note": "no table yet: nothing to check"})
        report = validate(model, table, chunk_rows=chunk_rows)
        if not report.passed:
            context.log.warning(f"{model.name}: {report.failure_cases} failures in {report.failing_rows} rows "
                                f"of {report.rows_checked}: {dict(report.by_rule)}")
        return dg.AssetCheckResult(passed=report.passed, severity=SEVERITIES[severity],
                                   metadata=report_metadata(report))

    return pandera_check


def report_metadata(report: ValidationReport) -> dict[str, object]:
    return {
        "model": report.model,
        "rows_checked": report.rows_checked,
        "failure_count": report.failure_cases,
        "failing_rows": report.failing_rows,
        "failures_by_column": dg.MetadataValue.json(dict(report.by_column.most_common())),
        "failures_by_rule": dg.MetadataValue.json(dict(report.by_rule.most_common())),
        "first_failures": dg.MetadataValue.text(at_a_glance(report.samples) or "none"),
        "failing_rows_sample": dg.MetadataValue.md(markdown_table(report.samples) if report.samples
                                                   else "No failing rows."),
        "seconds": report.seconds,
    }


def at_a_glance(samples: list[dict], count: int = 3) -> str:
    """The first failures in a line each, shown inline in the UI (the Markdown table is one click away)."""
    fixed = {"row", "column", "rule", "value"}
    lines = []
    for sample in samples[:count]:
        key = ", ".join(f"{k}={v}" for k, v in sample.items() if k not in fixed)
        where = f"row {sample['row']}" + (f" ({key})" if key else "") if sample.get("row") is not None else "layout"
        lines.append(f"{where}: {sample['column']} fails {sample['rule']}: {sample['value']}")
    return "; ".join(lines)


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(c for row in rows for c in row))

    def cell(value: object) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
