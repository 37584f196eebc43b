-- What the marts take of the PD features: the current LTV and the remaining term.
select
    loan_id,
    cutoff_date,
    ltv_current,
    remaining_term_months
from {{ source('features', 'loan_features') }}
