{#- The delinquency buckets of the KPIs, by days past due, in the order of the KPIs' columns. -#}
{% macro dpd_buckets() %}{{ return(["current", "1_29", "30_59", "60_89", "90_plus"]) }}{% endmacro %}

{#- null when days past due is (no bucket swallows a missing value: not_null on the bucket says so) -#}
{% macro dpd_bucket(days_past_due) -%}
    case
        when {{ days_past_due }} <= 0 then 'current'
        when {{ days_past_due }} < 30 then '1_29'
        when {{ days_past_due }} < 60 then '30_59'
        when {{ days_past_due }} < 90 then '60_89'
        when {{ days_past_due }} >= 90 then '90_plus'
    end
{%- endmacro %}
