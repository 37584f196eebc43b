-- Per month-end cutoff and NUTS2 region: the performing loans' PD (mean and balance-weighted), expected loss, and,
-- once 12 months have passed, the default rate that followed, to set against the PD.
with tape as (
    select * from {{ ref('loan_tape') }} where is_performing
),

outcomes as (
    select * from {{ ref('stg_features__loan_outcomes') }}
)

select
    tape.cutoff_date,
    tape.nuts2_code,
    coalesce(any_value(tape.nuts2_name), 'postcode not matched') as nuts2_name,
    count(*) as loans,
    sum(tape.outstanding_principal) as balance,
    count(tape.pd_12m) as loans_scored,
    avg(tape.pd_12m) as mean_pd_12m,
    {{ ratio('sum(tape.pd_12m * tape.outstanding_principal)',
             'sum(case when tape.pd_12m is not null then tape.outstanding_principal end)') }} as wa_pd_12m,
    sum(tape.expected_loss) as expected_loss,
    count(outcomes.loan_id) as loans_with_outcome,
    avg(case when outcomes.defaulted_within_12m then 1.0 when outcomes.loan_id is not null then 0.0 end)
        as observed_default_rate_12m
from tape
left join outcomes on tape.loan_id = outcomes.loan_id and tape.cutoff_date = outcomes.cutoff_date
group by tape.cutoff_date, tape.nuts2_code
order by tape.cutoff_date, tape.nuts2_code
