"""The code location: every domain's definitions merged, with the resources of the current environment.

`dagster dev -w workspace.yaml`, `dg dev` and `dg check defs` all load `defs` from here.
"""

from __future__ import annotations

import dagster as dg

from cardo_pipeline.defs.resources import current_resources
from cardo_pipeline.defs.sources import topics

DEMO_JOB = "materialize_everything"


@dg.definitions
def defs() -> dg.Definitions:
    everything = dg.define_asset_job(
        DEMO_JOB,
        selection=dg.AssetSelection.all(include_sources=True),
        description="Observe the topics and materialize every asset: what `make demo` runs.",
    )
    return dg.Definitions.merge(
        topics.defs,
        dg.Definitions(jobs=[everything], resources=current_resources()),
    )
