{#- num / den, null (not an error, not infinity) when den is 0 or null -#}
{% macro ratio(numerator, denominator) -%}
    ({{ numerator }}) / nullif({{ denominator }}, 0)
{%- endmacro %}

{#- the weight-weighted average of value over the rows where value is known (an unknown value weighs nothing) -#}
{% macro weighted_average(value, weight) -%}
    {{ ratio('sum(' ~ value ~ ' * ' ~ weight ~ ')', 'sum(case when ' ~ value ~ ' is not null then ' ~ weight ~ ' end)') }}
{%- endmacro %}

{#- a monthly rate as an annual one: 1 - (1 - m)^12 (CPR from SMM, CDR from MDR) -#}
{% macro annualised(monthly) -%}
    1 - power(1 - ({{ monthly }}), 12)
{%- endmacro %}

{#- the trailing 12 months' monthly rates as one annual rate, 1 - prod(1 - m); null until 12 months are known -#}
{% macro trailing_12_months(monthly, order_by) -%}
    case when count({{ monthly }}) over (order by {{ order_by }} rows between 11 preceding and current row) = 12
        then 1 - exp(sum(ln(greatest(1 - ({{ monthly }}), 1e-12)))
                     over (order by {{ order_by }} rows between 11 preceding and current row))
    end
{%- endmacro %}

{#- whole months from start to end (a date), as features count seasoning: a month is whole on its day -#}
{% macro months_between(start, end) -%}
    ((year({{ end }}) * 12 + month({{ end }})) - (year({{ start }}) * 12 + month({{ start }}))
        - case when day({{ start }}) > day({{ end }}) then 1 else 0 end)
{%- endmacro %}

{#- the principal an annuity repays in its next instalment: balance at monthly rate i over n months left -#}
{% macro scheduled_principal(balance, annual_rate, months_left) -%}
    least(greatest(
        case when {{ annual_rate }} > 0
            then {{ balance }} * ({{ annual_rate }} / 12) / (1 - power(1 + {{ annual_rate }} / 12, -{{ months_left }}))
            else {{ balance }} / {{ months_left }}
        end - {{ balance }} * greatest({{ annual_rate }}, 0) / 12, 0), {{ balance }})
{%- endmacro %}

{#- loss given default (var `lgd`, a share), as a double so that every figure it enters stays one -#}
{% macro lgd() -%}
    cast({{ var('lgd') }} as double)
{%- endmacro %}
