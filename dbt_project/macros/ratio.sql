{#- num / den, null (not an error, not infinity) when den is 0 or null -#}
{% macro ratio(numerator, denominator) -%}
    ({{ numerator }}) / nullif({{ denominator }}, 0)
{%- endmacro %}

{#- a monthly rate as an annual one: 1 - (1 - m)^12 (CPR from SMM, CDR from MDR) -#}
{% macro annualised(monthly) -%}
    1 - power(1 - ({{ monthly }}), 12)
{%- endmacro %}
