select
    loan_id,
    cutoff_date,
    pd_12m,
    risk_grade,
    model_version
from {{ source('models', 'pd_scores') }}
