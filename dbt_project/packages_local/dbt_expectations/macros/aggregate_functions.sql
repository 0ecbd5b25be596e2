{#- Aggregate tests return one row per failing group with the aggregate that failed. -#}

{% test expect_column_distinct_count_to_be_greater_than(
    model, column_name, value, group_by=None, row_condition=None
) %}
with grouped as (
    select
        {% for column in group_by or [] -%}
        {{ column }},
        {% endfor -%}
        count(distinct {{ column_name }}) as distinct_count
    from {{ model }}
    where {{ dbt_expectations._row_condition_sql(row_condition) }}
    {%- if group_by %}
    group by {{ group_by | join(", ") }}
    {%- endif %}
)

select * from grouped
where not (distinct_count > {{ value }})
{% endtest %}


{% test expect_table_row_count_to_be_between(
    model, min_value=None, max_value=None, group_by=None, row_condition=None, strictly=False
) %}
    {%- if min_value is none and max_value is none -%}
        {{ exceptions.raise_compiler_error("expect_table_row_count_to_be_between needs min_value or max_value") }}
    {%- endif -%}
    {%- set lower_op = ">" if strictly else ">=" -%}
    {%- set upper_op = "<" if strictly else "<=" %}
with grouped as (
    select
        {% for column in group_by or [] -%}
        {{ column }},
        {% endfor -%}
        count(*) as row_count
    from {{ model }}
    where {{ dbt_expectations._row_condition_sql(row_condition) }}
    {%- if group_by %}
    group by {{ group_by | join(", ") }}
    {%- endif %}
)

select * from grouped
where not (
    {% if min_value is not none %}row_count {{ lower_op }} {{ min_value }}{% else %}true{% endif %}
    and {% if max_value is not none %}row_count {{ upper_op }} {{ max_value }}{% else %}true{% endif %}
)
{% endtest %}
