"""The source table registry: one entry per servicing table drives raw, curated and Iceberg assets and their checks.

Adding a source table is one entry here plus its migration; `test_tables.py` proves the two agree with Postgres.
Each entry also says where its tables live (`SourceTable.layout`: asset key paths, which are the lake paths too)
and which topic Debezium writes it to (`SourceTable.topic`): nothing else spells those out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

DEFAULT_TOPIC_PREFIX = "servicing"  # Debezium's topic.prefix (ARCHITECTURE section 3)
DEAD_LETTER_PATH = ("raw", "_dead_letter")  # shared by every topic


def topic_name(prefix: str, table: str) -> str:
    """The topic Debezium's Postgres connector writes `public.<table>` to."""
    return f"{prefix}.public.{table}"


def lake_uri(root: str, path: Sequence[str]) -> str:
    """A table's location: `<lake root>/<asset key path>` (a folder locally, an object store URI in production)."""
    return "/".join([str(root).rstrip("/"), *path])


@dataclass(frozen=True)
class TableLayout:
    """The asset key paths of one source table's tables; a table's lake path is its key path under the lake root."""

    kafka: tuple[str, ...]  # the Debezium topic, an observed source asset (not in the lake)
    raw: tuple[str, ...]
    curated: tuple[str, ...]
    history: tuple[str, ...]
    iceberg: tuple[str, ...]  # in the Iceberg catalog, namespace `curated`
    truncates: tuple[str, ...]  # the truncates seen, beside the curated tables (no asset of its own)

    @classmethod
    def of(cls, name: str) -> TableLayout:
        return cls(kafka=("kafka", name), raw=("raw", name), curated=("curated", name),
                   history=("curated", f"{name}_history"), iceberg=("iceberg", name),
                   truncates=("curated", "_truncates", name))


@dataclass(frozen=True)
class Range:
    """A value rule of the source contract: within [low, high], either end open or absent."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def describe(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'[' if self.low_inclusive and self.low is not None else '('}{low}, {high}" \
               f"{']' if self.high_inclusive and self.high is not None else ')'}"


@dataclass(frozen=True)
class OneOf:
    """An enumeration of the source contract."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class Before:
    """A row rule: `earlier` < `later` (or <= when not strict) wherever both are present."""

    earlier: str
    later: str
    strict: bool = True

    def describe(self) -> str:
        return f"{self.earlier} {'<' if self.strict else '<='} {self.later}"


Rule = Range | OneOf


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str  # as Postgres reports it in information_schema (numeric(14,2) written in full)
    nullable: bool = False
    rules: tuple[Rule, ...] = ()  # what every value must satisfy (nulls are nullable's business)


@dataclass(frozen=True)
class SourceTable:
    name: str
    primary_key: tuple[str, ...]
    columns: tuple[Column, ...]
    description: str
    toasted: tuple[str, ...] = ()  # columns that can arrive as Debezium's unchanged-TOAST placeholder
    row_rules: tuple[Before, ...] = ()  # rules across columns of one row

    @cached_property
    def layout(self) -> TableLayout:
        return TableLayout.of(self.name)

    def topic(self, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
        return topic_name(prefix, self.name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


def _cols(*spec: tuple) -> tuple[Column, ...]:
    return tuple(Column(*s) for s in spec)


# The rules of the source contract (ARCHITECTURE section 3). They become the Pandera models of every table that
# holds these columns (`cardo_pipeline.quality.models`).
COUNTRIES = OneOf(("IT", "ES", "DE", "FR", "NL", "PT"))
NON_NEGATIVE = Range(low=0)
POSITIVE = Range(low=0, low_inclusive=False)


SOURCE_TABLES: tuple[SourceTable, ...] = (
    SourceTable(
        name="borrowers",
        primary_key=("borrower_id",),
        description="Borrowers (individuals and SMEs) with income, employment and address.",
        columns=_cols(
            ("borrower_id", "bigint"),
            ("borrower_type", "text", False, (OneOf(("individual", "sme")),)),
            ("full_name", "text"),
            ("birth_date", "date", True),
            ("annual_income", "numeric(14,2)", False, (NON_NEGATIVE,)),
            ("employment_status", "text", False, (OneOf(
                ("employed", "self_employed", "unemployed", "retired", "startup", "trading")),)),
            ("postcode", "text"),
            ("country_code", "char(2)", False, (COUNTRIES,)),
            ("created_at", "timestamptz"),
            ("updated_at", "timestamptz"),
        ),
        row_rules=(Before("created_at", "updated_at", strict=False),),
    ),
    SourceTable(
        name="loans",
        primary_key=("loan_id",),
        description="Loans: terms, outstanding principal, status and days past due.",
        toasted=("servicer_notes",),
        columns=_cols(
            ("loan_id", "bigint"),
            ("borrower_id", "bigint"),
            ("product", "text", False, (OneOf(("mortgage", "consumer", "auto", "sme")),)),
            ("currency", "char(3)", False, (OneOf(("EUR",)),)),
            ("principal", "numeric(14,2)", False, (POSITIVE,)),
            ("interest_rate", "numeric(7,5)", False, (Range(low=0, high=1, high_inclusive=False),)),
            ("term_months", "integer", False, (POSITIVE,)),
            ("origination_date", "date"),
            ("maturity_date", "date"),
            ("outstanding_principal", "numeric(14,2)", False, (NON_NEGATIVE,)),
            ("status", "text", False, (OneOf(("active", "repaid", "defaulted", "written_off")),)),
            ("days_past_due", "integer", False, (NON_NEGATIVE,)),
            ("servicer_notes", "text", True),
            ("updated_at", "timestamptz"),
        ),
        row_rules=(Before("origination_date", "maturity_date"),),
    ),
    SourceTable(
        name="collaterals",
        primary_key=("collateral_id",),
        description="Collateral securing loans, with appraisal and location.",
        columns=_cols(
            ("collateral_id", "bigint"),
            ("loan_id", "bigint"),
            ("collateral_type", "text", False, (OneOf(("residential", "commercial", "vehicle", "equipment")),)),
            ("appraised_value", "numeric(14,2)", False, (POSITIVE,)),
            ("appraisal_date", "date"),
            ("postcode", "text"),
            ("country_code", "char(2)", False, (COUNTRIES,)),
            ("updated_at", "timestamptz"),
        ),
    ),
    SourceTable(
        name="payments",
        primary_key=("payment_id",),
        description="Scheduled instalments and what was paid, when.",
        columns=_cols(
            ("payment_id", "bigint"),
            ("loan_id", "bigint"),
            ("due_date", "date"),
            ("amount_due", "numeric(14,2)", False, (NON_NEGATIVE,)),
            ("paid_date", "date", True),
            ("amount_paid", "numeric(14,2)", False, (NON_NEGATIVE,)),
            ("status", "text", False, (OneOf(("scheduled", "paid", "late", "missed")),)),
            ("updated_at", "timestamptz"),
        ),
    ),
)

TABLES_BY_NAME: dict[str, SourceTable] = {t.name: t for t in SOURCE_TABLES}
