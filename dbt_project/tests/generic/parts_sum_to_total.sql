{#- Fails for each row whose parts (the delinquency buckets, say) do not add up to its total. -#}
{% test parts_sum_to_total(model, parts, total, relative_tolerance=0.000000001) %}
select *, {{ parts | join(' + ') }} as sum_of_parts
from {{ model }}
where abs(({{ parts | join(' + ') }}) - {{ total }}) > {{ relative_tolerance }} * greatest(abs({{ total }}), 1)
{% endtest %}
