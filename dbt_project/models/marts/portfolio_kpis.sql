-- Per month-end cutoff: the performing book (balance, count, weighted averages, delinquency), the non-performing stock,
-- what left the performing book in the month (defaults, prepayments) over what was performing at the month's start,
-- and the expected loss.
with tape as (
    select * from {{ ref('loan_tape') }}
),

performing as (
    select
        cutoff_date,
        count(*) as loans_outstanding,
        sum(outstanding_principal) as balance_outstanding,
        {{ weighted_average('interest_rate', 'outstanding_principal') }} as wa_interest_rate,
        {{ weighted_average('ltv_current', 'outstanding_principal') }} as wa_ltv,
        {{ weighted_average('remaining_term_months', 'outstanding_principal') }} as wa_remaining_term_months,
        {% for bucket in dpd_buckets() %}
        count(*) filter (where dpd_bucket = '{{ bucket }}') as dpd_{{ bucket }}_count,
        coalesce(sum(outstanding_principal) filter (where dpd_bucket = '{{ bucket }}'), 0)
            as dpd_{{ bucket }}_balance,
        {% endfor %}
        count(pd_12m) as loans_scored,
        {{ weighted_average('pd_12m', 'outstanding_principal') }} as wa_pd_12m,
        sum(expected_loss) as expected_loss
    from tape
    where is_performing
    group by cutoff_date
),

-- the month's flows, over the book performing at the previous cutoff (and still in the source)
flows as (
    select
        cutoff_date,
        count(*) filter (where previous_status = 'active') as loans_at_month_start,
        coalesce(sum(previous_outstanding_principal) filter (where previous_status = 'active'), 0)
            as balance_at_month_start,
        coalesce(sum(scheduled_principal) filter (where previous_status = 'active'), 0) as scheduled_principal,
        count(*) filter (where closed_as = 'defaulted' and previous_status = 'active') as defaults_in_month,
        coalesce(sum(previous_outstanding_principal)
            filter (where closed_as = 'defaulted' and previous_status = 'active'), 0) as defaulted_balance,
        count(*) filter (where closed_as = 'prepaid' and previous_status = 'active') as prepayments_in_month,
        -- what a prepayment repaid beyond its scheduled principal
        coalesce(sum(previous_outstanding_principal - scheduled_principal)
            filter (where closed_as = 'prepaid' and previous_status = 'active'), 0) as prepaid_balance,
        count(*) filter (where is_non_performing) as loans_non_performing,
        coalesce(sum(outstanding_principal) filter (where is_non_performing), 0) as balance_non_performing
    from tape
    group by cutoff_date
),

monthly as (
    select
        performing.*,
        flows.* exclude (cutoff_date),
        -- monthly default rate by balance (MDR) and by count
        {{ ratio('flows.defaulted_balance', 'flows.balance_at_month_start') }} as default_rate,
        {{ ratio('flows.defaults_in_month', 'flows.loans_at_month_start') }} as default_rate_count,
        -- single monthly mortality: unscheduled principal repaid over the balance left after scheduled principal
        {{ ratio('flows.prepaid_balance', 'flows.balance_at_month_start - flows.scheduled_principal') }}
            as prepayment_rate_smm
    from performing
    inner join flows on performing.cutoff_date = flows.cutoff_date
)

select
    cutoff_date,
    loans_outstanding,
    balance_outstanding,
    wa_interest_rate,
    wa_ltv,
    wa_remaining_term_months,
    {% for bucket in dpd_buckets() %}
    dpd_{{ bucket }}_count,
    dpd_{{ bucket }}_balance,
    {% endfor %}
    loans_non_performing,
    balance_non_performing,
    {{ ratio('balance_non_performing', 'balance_outstanding + balance_non_performing') }} as npl_ratio,
    loans_at_month_start,
    balance_at_month_start,
    scheduled_principal,
    defaults_in_month,
    defaulted_balance,
    default_rate,
    default_rate_count,
    {{ annualised('default_rate') }} as default_rate_annualised,
    {{ trailing_12_months('default_rate', 'cutoff_date') }} as cdr_12m,
    prepayments_in_month,
    prepaid_balance,
    prepayment_rate_smm,
    {{ annualised('prepayment_rate_smm') }} as cpr,
    {{ trailing_12_months('prepayment_rate_smm', 'cutoff_date') }} as cpr_12m,
    loans_scored,
    wa_pd_12m,
    expected_loss,
    {{ lgd() }} as lgd,
    {{ ratio('expected_loss', 'balance_outstanding') }} as expected_loss_rate
from monthly
order by cutoff_date
