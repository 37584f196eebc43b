-- The loan attributes that do not change over a loan's life, from the current state.
select
    loan_id,
    currency,
    origination_date,
    maturity_date
from {{ source('curated', 'loans') }}
