{#- A drop carries the events of its own month: a timestamp must fall in
    [first day of the as_of month 00:00 UTC, as_of + 1 day 00:00 UTC). A later timestamp is
    leakage from the future; an earlier one belongs to another drop. NULL passes. -#}
{% test event_within_drop_month(model, column_name, as_of_column='as_of') %}
select *
from {{ model }}
where not (
    {{ column_name }} >= (date_trunc('month', {{ as_of_column }}::timestamp) at time zone 'UTC')
    and {{ column_name }} < {{ window_end(as_of_column) }}
)
{% endtest %}
