{#- Fails for each row whose value is below the one before it in its partition (a cumulative curve that fell). -#}
{% test non_decreasing(model, column_name, partition_by, order_by) %}
select * from (
    select *, lag({{ column_name }}) over (partition by {{ partition_by | join(', ') }} order by {{ order_by }})
        as previous_value
    from {{ model }}
) as ordered
where {{ column_name }} < previous_value
{% endtest %}
