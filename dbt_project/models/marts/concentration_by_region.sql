-- Per month-end cutoff and NUTS level (1, 2, 3): each region's share of the performing balance, its rank, whether it
-- is in the top 10, and the level's Herfindahl-Hirschman index (sum of squared shares: 1/N for N equal regions,
-- 1 for one region). Loans whose postcode matched no region count as one region, `unmatched`.
with performing as (
    select * from {{ ref('loan_tape') }} where is_performing
),

by_region as (
    {% for level in [1, 2, 3] %}
    select
        cutoff_date,
        {{ level }} as nuts_level,
        nuts{{ level }}_code as region_code,
        coalesce(any_value(nuts{{ level }}_name), 'postcode not matched') as region_name,
        count(*) as loans,
        sum(outstanding_principal) as balance
    from performing
    group by cutoff_date, nuts{{ level }}_code
    {% if not loop.last %}union all{% endif %}
    {% endfor %}
),

shares as (
    select
        *,
        balance / sum(balance) over (partition by cutoff_date, nuts_level) as balance_share,
        row_number() over (partition by cutoff_date, nuts_level order by balance desc, region_code) as balance_rank
    from by_region
)

select
    cutoff_date,
    nuts_level,
    region_code,
    region_name,
    loans,
    balance,
    balance_share,
    balance_rank,
    balance_rank <= 10 as is_top_10,
    sum(balance_share * balance_share) over (partition by cutoff_date, nuts_level) as hhi,
    sum(case when balance_rank <= 10 then balance_share else 0 end) over (partition by cutoff_date, nuts_level)
        as top_10_share,
    count(*) over (partition by cutoff_date, nuts_level) as regions
from shares
order by cutoff_date, nuts_level, balance_rank
