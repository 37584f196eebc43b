select
    collateral_id,
    loan_id,
    collateral_type,
    nuts3_code as collateral_nuts3_code
from {{ source('features', 'collaterals_geo') }}
