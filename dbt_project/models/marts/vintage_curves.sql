-- Cumulative default rate by origination quarter (vintage) and months on book: of the loans a quarter originated,
-- the share (by count and by original principal) that defaulted within m months of origination. A vintage's curve
-- runs as far as its youngest loan has been observed; quarters that began before the first cutoff's month are left
-- out (their early defaults came before the tape).
with tape as (
    select * from {{ ref('loan_tape') }}
),

first_cutoff as (
    select min(cutoff_date) as cutoff_date, max(cutoff_date) as last_cutoff_date from tape
),

loans as (
    select
        loan_id,
        any_value(vintage) as vintage,
        any_value(origination_date) as origination_date,
        any_value(principal) as principal,
        min(months_on_book) filter (where closed_as = 'defaulted') as defaulted_at_month
    from tape
    group by loan_id
),

vintages as (
    select
        vintage,
        count(*) as loans_originated,
        sum(principal) as principal_originated,
        -- observed months: from the vintage's youngest loan to the last cutoff
        {{ months_between('max(origination_date)', 'any_value(first_cutoff.last_cutoff_date)') }} as months_observed
    from loans
    cross join first_cutoff
    where date_trunc('quarter', loans.origination_date) >= date_trunc('month', first_cutoff.cutoff_date)
    group by vintage
),

months as (
    select vintage, generate_series as months_on_book
    from vintages, generate_series(0, vintages.months_observed)
)

select
    months.vintage,
    months.months_on_book,
    vintages.loans_originated,
    vintages.principal_originated,
    count(loans.loan_id) as cumulative_defaults,
    coalesce(sum(loans.principal), 0) as cumulative_defaulted_principal,
    count(loans.loan_id) / vintages.loans_originated as cumulative_default_rate,
    coalesce(sum(loans.principal), 0) / vintages.principal_originated as cumulative_default_rate_by_principal
from months
inner join vintages on months.vintage = vintages.vintage
left join loans
    on loans.vintage = months.vintage and loans.defaulted_at_month <= months.months_on_book
group by months.vintage, months.months_on_book, vintages.loans_originated, vintages.principal_originated
order by months.vintage, months.months_on_book
