-- Per month-end cutoff: the performing book (balance, count, weighted averages, delinquency), what left it in the
-- month (defaults, prepayments) over what was performing at the month's start, and the expected loss.
with tape as (
    select * from {{ ref('loan_tape') }}
),

performing as (
    select
        cutoff_date,
        count(*) as loans_outstanding,
        sum(outstanding_principal) as balance_outstanding,
        {{ ratio('sum(interest_rate * outstanding_principal)', 'sum(outstanding_principal)') }}
            as wa_interest_rate,
        {{ ratio('sum(ltv_current * outstanding_principal)',
                 'sum(case when ltv_current is not null then outstanding_principal end)') }} as wa_ltv,
        {{ ratio('sum(remaining_term_months * outstanding_principal)', 'sum(outstanding_principal)') }}
            as wa_remaining_term_months,
        {% for bucket in dpd_buckets() %}
        count(*) filter (where dpd_bucket = '{{ bucket }}') as dpd_{{ bucket }}_count,
        coalesce(sum(outstanding_principal) filter (where dpd_bucket = '{{ bucket }}'), 0)
            as dpd_{{ bucket }}_balance,
        {% endfor %}
        count(pd_12m) as loans_scored,
        {{ ratio('sum(pd_12m * outstanding_principal)', 'sum(case when pd_12m is not null then outstanding_principal end)') }}
            as wa_pd_12m,
        sum(expected_loss) as expected_loss
    from tape
    where is_performing
    group by cutoff_date
),

-- the month's flows, over the book performing at the previous cutoff
flows as (
    select
        cutoff_date,
        count(*) filter (where previous_status = 'active') as loans_at_month_start,
        coalesce(sum(previous_outstanding_principal) filter (where previous_status = 'active'), 0)
            as balance_at_month_start,
        count(*) filter (where closed_as = 'defaulted' and previous_status = 'active') as defaults_in_month,
        coalesce(sum(previous_outstanding_principal)
            filter (where closed_as = 'defaulted' and previous_status = 'active'), 0) as defaulted_balance,
        count(*) filter (where closed_as = 'prepaid' and previous_status = 'active') as prepayments_in_month,
        coalesce(sum(previous_outstanding_principal)
            filter (where closed_as = 'prepaid' and previous_status = 'active'), 0) as prepaid_balance
    from tape
    group by cutoff_date
)

select
    performing.cutoff_date,
    performing.loans_outstanding,
    performing.balance_outstanding,
    performing.wa_interest_rate,
    performing.wa_ltv,
    performing.wa_remaining_term_months,
    {% for bucket in dpd_buckets() %}
    performing.dpd_{{ bucket }}_count,
    performing.dpd_{{ bucket }}_balance,
    {% endfor %}
    flows.loans_at_month_start,
    flows.balance_at_month_start,
    flows.defaults_in_month,
    flows.defaulted_balance,
    -- monthly default rate by balance (MDR) and its annual equivalent (CDR)
    {{ ratio('flows.defaulted_balance', 'flows.balance_at_month_start') }} as default_rate,
    {{ annualised(ratio('flows.defaulted_balance', 'flows.balance_at_month_start')) }} as default_rate_annualised,
    flows.prepayments_in_month,
    flows.prepaid_balance,
    -- single monthly mortality (SMM): balance repaid in full before maturity over the month's opening balance
    {{ ratio('flows.prepaid_balance', 'flows.balance_at_month_start') }} as prepayment_rate_smm,
    {{ annualised(ratio('flows.prepaid_balance', 'flows.balance_at_month_start')) }} as cpr,
    performing.loans_scored,
    performing.wa_pd_12m,
    performing.expected_loss,
    {{ lgd() }} as lgd,
    {{ ratio('performing.expected_loss', 'performing.balance_outstanding') }} as expected_loss_rate
from performing
inner join flows on performing.cutoff_date = flows.cutoff_date
order by performing.cutoff_date
