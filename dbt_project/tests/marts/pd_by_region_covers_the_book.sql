{{ config(meta={'dagster': {'ref': {'name': 'pd_by_region'}}}) }}
-- The NUTS2 rows of a cutoff hold every performing loan and the whole expected loss of its KPIs.
select p.cutoff_date, sum(p.loans) as loans, any_value(k.loans_outstanding) as book
from {{ ref('pd_by_region') }} as p
inner join {{ ref('portfolio_kpis') }} as k on p.cutoff_date = k.cutoff_date
group by p.cutoff_date
having sum(p.loans) <> any_value(k.loans_outstanding)
    or abs(coalesce(sum(p.expected_loss), 0) - coalesce(any_value(k.expected_loss), 0))
        > 1e-6 * greatest(coalesce(any_value(k.expected_loss), 0), 1)
