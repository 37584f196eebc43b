"""Two tables compared by key: the rows only one side has, and the rows both have with other values (null equals
null). Shared by the blocking checks that hold one table against another (curated current vs history, Iceberg
vs Delta)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass
class KeyDiff:
    key: list[str]
    only_left: pl.DataFrame
    only_right: pl.DataFrame
    differing: pl.DataFrame  # left's rows whose key the right has with other values

    def samples(self, only_left: str, only_right: str, differing: str, size: int) -> list[dict]:
        """Up to `size` keys of each kind, labelled."""
        return [{"problem": label, **row}
                for label, frame in ((only_left, self.only_left), (only_right, self.only_right),
                                     (differing, self.differing))
                for row in frame.select(self.key).head(size).to_dicts()]


def diff_by_key(left: pl.DataFrame, right: pl.DataFrame, key: list[str]) -> KeyDiff:
    columns = [c for c in left.columns if c not in key]
    both = left.join(right, on=key, how="inner", suffix="__right")
    return KeyDiff(
        key,
        only_left=left.join(right, on=key, how="anti", nulls_equal=True),
        only_right=right.join(left, on=key, how="anti", nulls_equal=True),
        differing=both.filter(pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}__right")) for c in columns)),
    )
