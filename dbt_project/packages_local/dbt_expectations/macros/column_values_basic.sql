{#- Column value tests. A row fails when the expectation is false; NULL values pass
    (use expect_column_values_to_not_be_null for them), as upstream. -#}

{% test expect_column_values_to_not_be_null(model, column_name, row_condition=None) %}
    {{ dbt_expectations._rows_where_not(model, column_name ~ " is not null", row_condition) }}
{% endtest %}


{% test expect_column_values_to_be_unique(model, column_name, row_condition=None) %}
with counted as (
    select
        *,
        count(*) over (partition by {{ column_name }}) as n_records
    from {{ model }}
    where
        {{ dbt_expectations._row_condition_sql(row_condition) }}
        and {{ column_name }} is not null
)

select * from counted
where n_records > 1
{% endtest %}


{% test expect_column_values_to_be_in_set(model, column_name, value_set, quote_values=True, row_condition=None) %}
    {%- set expression -%}
        {{ column_name }} in ({{ dbt_expectations._quoted_list(value_set, quote_values) }})
    {%- endset -%}
    {{ dbt_expectations._rows_where_not(model, expression, row_condition) }}
{% endtest %}


{% test expect_column_values_to_be_between(
    model, column_name, min_value=None, max_value=None, row_condition=None, strictly=False
) %}
    {%- if min_value is none and max_value is none -%}
        {{ exceptions.raise_compiler_error(
            "expect_column_values_to_be_between needs min_value or max_value (column " ~ column_name ~ ")"
        ) }}
    {%- endif -%}
    {%- set lower_op = ">" if strictly else ">=" -%}
    {%- set upper_op = "<" if strictly else "<=" -%}
    {%- set expression -%}
        {%- if min_value is not none -%}{{ column_name }} {{ lower_op }} {{ min_value }}{%- endif -%}
        {%- if min_value is not none and max_value is not none %} and {% endif -%}
        {%- if max_value is not none -%}{{ column_name }} {{ upper_op }} {{ max_value }}{%- endif -%}
    {%- endset -%}
    {{ dbt_expectations._rows_where_not(model, expression, row_condition) }}
{% endtest %}
