"""Does a mirror hold exactly the rows of the Delta version it says it mirrors? (the blocking asset check)"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from cardo_pipeline.curate.key_diff import diff_by_key
from cardo_pipeline.curate.merge_on_read import read_live
from cardo_pipeline.mirror.iceberg import IcebergMirror


@dataclass
class MirrorComparison:
    delta_version: int | None = None
    delta_rows: int = 0
    iceberg_rows: int = 0
    only_in_delta: int = 0
    only_in_iceberg: int = 0
    differing: int = 0
    samples: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (self.only_in_delta or self.only_in_iceberg or self.differing
                    or self.delta_rows != self.iceberg_rows)


def compare_mirror(mirror: IcebergMirror, sample_size: int = 5) -> MirrorComparison:
    iceberg = mirror.iceberg_table()
    version = mirror.mirrored_version(iceberg)
    result = MirrorComparison(delta_version=version)
    if version is None:
        return result
    # The Delta version the mirror claims, not the latest: curated may have moved on since.
    live = read_live(mirror.delta_uri, version=version, columns=mirror.schema.names)
    delta = pl.from_arrow((live.to_arrow() if live is not None else mirror.schema.empty_table()).cast(mirror.schema))
    mirrored = pl.from_arrow(iceberg.scan().to_arrow().cast(mirror.schema))
    assert isinstance(delta, pl.DataFrame) and isinstance(mirrored, pl.DataFrame)
    result.delta_rows, result.iceberg_rows = delta.height, mirrored.height
    diff = diff_by_key(delta, mirrored, mirror.key)
    result.only_in_delta, result.only_in_iceberg = diff.only_left.height, diff.only_right.height
    result.differing = diff.differing.height
    result.samples = diff.samples("only in delta", "only in iceberg", "differs", sample_size)
    return result
