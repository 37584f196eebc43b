select
    loan_id,
    cutoff_date,
    default_12m = 1 as defaulted_within_12m
from {{ source('features', 'loan_default_outcomes') }}
