select
    code as nuts_code,
    cast(level as integer) as nuts_level,
    name as nuts_name
from {{ source('reference', 'nuts_regions') }}
where level between 1 and 3
