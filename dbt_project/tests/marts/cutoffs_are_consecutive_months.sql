{{ config(meta={'dagster': {'ref': {'name': 'portfolio_kpis'}}}) }}
-- A month missing between two cutoffs (a features partition not materialized) would bend every rate across it.
select cutoff_date, previous_cutoff
from (
    select cutoff_date, lag(cutoff_date) over (order by cutoff_date) as previous_cutoff
    from {{ ref('portfolio_kpis') }}
) as ordered
where previous_cutoff is not null and cutoff_date <> last_day(previous_cutoff + interval 1 month)
