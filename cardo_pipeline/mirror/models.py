"""The Pandera model of an Iceberg mirror (`iceberg.IcebergMirror`): the curated current state's contract, read
from the Iceberg table (position deletes applied by pyiceberg)."""

from __future__ import annotations

from collections.abc import Iterator

import pandera.polars as pa
import polars as pl

from cardo_pipeline.curate.models import current_model
from cardo_pipeline.quality.models import model_title, polars_dtypes
from cardo_pipeline.tables import SourceTable


def mirror_model(table: SourceTable) -> pa.DataFrameSchema:
    return current_model(table, name=f"Iceberg{model_title(table)}",
                         description=f"Iceberg mirror of `curated/{table.name}`: the same contract, one row per key.")


class IcebergTableSource:
    """A mirror as `quality.validate` reads it: its live rows (position deletes applied), a data file at a time."""

    def __init__(self, table):  # a pyiceberg Table
        self.table = table

    def schema(self) -> pl.Schema:
        return pl.Schema(polars_dtypes(self.table.schema().as_arrow()))

    def batches(self, columns: list[str], chunk_rows: int) -> Iterator[pl.DataFrame]:
        from cardo_pipeline.mirror.position_deletes import live_pieces

        for piece in live_pieces(self.table, chunk_rows, columns):
            yield pl.from_arrow(piece.select(columns))

    def columns(self, columns: list[str]) -> pl.DataFrame:
        pieces = list(self.batches(columns, 1_000_000))
        return pl.concat(pieces) if pieces else pl.DataFrame(schema={c: self.schema()[c] for c in columns})
