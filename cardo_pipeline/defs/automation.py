"""The automation condition of everything downstream of raw: Dagster's `eager`, except that only a request of
the asset resets it.

`eager` is reset when the asset is requested *or materialized*. A raw commit that lands while a curated run is
already under way (requested for the previous commit) is then swallowed when that run's materialization is seen
in the same tick, and the curated table stays behind until the next change arrives (seen in
`cardo bench freshness`: a change waited for minutes). Reset by requests only, the new raw commit is still
pending after the run and gets a run of its own (applying nothing if the first run already took it in).
"""

import dagster as dg


def follows_upstream() -> dg.AutomationCondition:
    return (
        (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated())
        .since(dg.AutomationCondition.newly_requested())
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("eager (reset by requests only)")
