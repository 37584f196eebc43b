-- One row per loan per month-end cutoff, as known at the cutoff: the loans performing (active) at the cutoff, the
-- defaulted ones not yet written off (the non-performing stock), and those that left the performing book in the
-- month (defaulted, prepaid, matured), which the default and prepayment rates count.
with snapshots as (
    select * from {{ ref('stg_features__loan_snapshots') }}
),

loans as (
    select * from {{ ref('stg_curated__loans') }}
),

features as (
    select * from {{ ref('stg_features__loan_features') }}
),

scores as (
    select * from {{ ref('stg_models__pd_scores') }}
),

regions as (
    select * from {{ ref('stg_reference__nuts_regions') }}
),

-- the region of a loan's first collateral (mortgages: where the property is; null when its postcode matched none)
collateral_regions as (
    select loan_id, first(collateral_nuts3_code order by collateral_id) as collateral_nuts3_code
    from {{ ref('stg_features__collaterals_geo') }}
    group by loan_id
),

tape as (
    select
        snapshots.loan_id,
        snapshots.cutoff_date,
        snapshots.borrower_id,
        snapshots.product,
        loans.currency,
        snapshots.origination_date,
        loans.maturity_date,
        strftime(snapshots.origination_date, '%Y') || '-Q' || quarter(snapshots.origination_date) as vintage,
        snapshots.months_on_book,
        snapshots.term_months,
        features.remaining_term_months,
        snapshots.principal,
        snapshots.outstanding_principal,
        snapshots.previous_outstanding_principal,
        snapshots.interest_rate,
        features.ltv_current,
        snapshots.status,
        snapshots.previous_status,
        snapshots.status = 'active' as is_performing,
        snapshots.status = 'defaulted' as is_non_performing,
        -- how a loan left the performing book in the month (null for one that did not: performing, or already out)
        case
            when snapshots.status = 'active' then null
            when snapshots.previous_status is not null and snapshots.previous_status <> 'active' then null
            when snapshots.status in ('defaulted', 'written_off') then 'defaulted'
            when snapshots.months_on_book < snapshots.term_months then 'prepaid'
            else 'matured'
        end as closed_as,
        -- the principal the month's instalment was due to repay (annuity on the balance a month earlier)
        case when snapshots.previous_status = 'active' then
            {{ scheduled_principal('snapshots.previous_outstanding_principal', 'snapshots.interest_rate',
                                   'greatest(snapshots.term_months - snapshots.months_on_book + 1, 1)') }}
        end as scheduled_principal,
        snapshots.days_past_due,
        {{ dpd_bucket('snapshots.days_past_due') }} as dpd_bucket,
        snapshots.country_code,
        coalesce(left(snapshots.nuts3_code, 3), 'unmatched') as nuts1_code,
        coalesce(left(snapshots.nuts3_code, 4), 'unmatched') as nuts2_code,
        coalesce(snapshots.nuts3_code, 'unmatched') as nuts3_code,
        collateral_regions.collateral_nuts3_code,
        scores.pd_12m,
        scores.risk_grade,
        scores.model_version as pd_model_version
    from snapshots
    left join loans on snapshots.loan_id = loans.loan_id
    left join features on snapshots.loan_id = features.loan_id and snapshots.cutoff_date = features.cutoff_date
    left join scores on snapshots.loan_id = scores.loan_id and snapshots.cutoff_date = scores.cutoff_date
    left join collateral_regions on snapshots.loan_id = collateral_regions.loan_id
)

select
    tape.*,
    nuts1.nuts_name as nuts1_name,
    nuts2.nuts_name as nuts2_name,
    nuts3.nuts_name as nuts3_name,
    -- expected loss over the next 12 months of a performing loan: PD x exposure (its balance) x LGD
    case when tape.is_performing then tape.pd_12m * tape.outstanding_principal * {{ lgd() }} end
        as expected_loss
from tape
left join regions as nuts1 on tape.nuts1_code = nuts1.nuts_code
left join regions as nuts2 on tape.nuts2_code = nuts2.nuts_code
left join regions as nuts3 on tape.nuts3_code = nuts3.nuts_code
