select
    loan_id,
    cutoff_date,
    borrower_id,
    product,
    principal,
    interest_rate,
    term_months,
    origination_date,
    seasoning_months as months_on_book,
    outstanding_principal,
    status,
    days_past_due,
    previous_status,
    previous_outstanding_principal,
    country_code,
    nuts3_code
from {{ source('features', 'loan_snapshots') }}
