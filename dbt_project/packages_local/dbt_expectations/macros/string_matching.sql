{#- Regular expressions use the database's own engine (PostgreSQL: POSIX ARE, `~`).
    A value matches when the pattern is found anywhere in it, as upstream: anchor it with ^...$. -#}

{% test expect_column_values_to_match_regex(
    model, column_name, regex, row_condition=None, is_raw=False, flags=""
) %}
    {%- set pattern = ("(?" ~ flags ~ ")" if flags else "") ~ regex -%}
    {%- set expression -%}
        {{ column_name }} ~ '{{ pattern | replace("'", "''") }}'
    {%- endset -%}
    {{ dbt_expectations._rows_where_not(model, expression, row_condition) }}
{% endtest %}
