{#- Every value of the column exists in `to`.`field` within the same drop (same as_of): an event
    or label about a user that drop does not know fails. Returns the offending rows. -#}
{% test relationships_within_drop(model, column_name, to, field, as_of_column='as_of') %}
with

child as (
    select * from {{ model }}
),

parent as (
    select
        {{ field }} as parent_key,
        {{ as_of_column }} as parent_as_of
    from {{ get_where_subquery(to) }}
)

select child.*
from child
where
    child.{{ column_name }} is not null
    and not exists (
        select 1
        from parent
        where
            parent.parent_as_of = child.{{ as_of_column }}
            and parent.parent_key = child.{{ column_name }}
    )
{% endtest %}
