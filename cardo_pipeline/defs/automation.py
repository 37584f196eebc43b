"""The automation condition of everything downstream of raw: Dagster's `eager`.

The Kafka sensor's runs carry a table's raw asset with its curated tables and mirror, so in the usual path there
is nothing left for the automation sensor to do: the downstream assets materialize after raw in the same run,
which resets `eager`. It requests them when raw is materialized some other way (from the UI, a backfill).

An earlier design left curated to the automation sensor and reset the condition by requests only: with `eager`, a
raw commit landing while a curated run was already under way was swallowed when that run's materialization was
seen in the same tick. That cannot happen now: a table's raw and curated steps are one run, and the Kafka sensor
starts no run for a table while another run materializing its assets is in flight.
"""

import dagster as dg


def follows_upstream() -> dg.AutomationCondition:
    return dg.AutomationCondition.eager()
