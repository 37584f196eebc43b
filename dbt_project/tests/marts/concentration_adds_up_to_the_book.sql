{{ config(meta={'dagster': {'ref': {'name': 'concentration_by_region'}}}) }}
-- Each NUTS level's regions hold the whole performing balance and every performing loan of the cutoff's KPIs.
select c.cutoff_date, c.nuts_level, sum(c.balance) as regions_balance, any_value(k.balance_outstanding) as book
from {{ ref('concentration_by_region') }} as c
inner join {{ ref('portfolio_kpis') }} as k on c.cutoff_date = k.cutoff_date
group by c.cutoff_date, c.nuts_level
having abs(sum(c.balance) - any_value(k.balance_outstanding)) > 1e-6 * greatest(any_value(k.balance_outstanding), 1)
    or sum(c.loans) <> any_value(k.loans_outstanding)
