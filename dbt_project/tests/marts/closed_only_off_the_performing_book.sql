{{ config(meta={'dagster': {'ref': {'name': 'loan_tape'}}}) }}
-- A performing loan has not left the book; a loan that left it this month was performing a month earlier (or is new).
select loan_id, cutoff_date, status, previous_status, closed_as
from {{ ref('loan_tape') }}
where (is_performing and closed_as is not null)
    or (closed_as is not null and previous_status is not null and previous_status <> 'active')
    or (not is_performing and not is_non_performing and closed_as is null)
