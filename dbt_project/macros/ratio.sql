{#- num / den, null (not an error, not infinity) when den is 0 or null -#}
{% macro ratio(numerator, denominator) -%}
    ({{ numerator }}) / nullif({{ denominator }}, 0)
{%- endmacro %}

{#- a monthly rate as an annual one: 1 - (1 - m)^12 (CPR from SMM, CDR from MDR) -#}
{% macro annualised(monthly) -%}
    1 - power(1 - ({{ monthly }}), 12)
{%- endmacro %}

{#- loss given default (var `lgd`, a share), as a double so that every figure it enters stays one -#}
{% macro lgd() -%}
    cast({{ var('lgd') }} as double)
{%- endmacro %}
