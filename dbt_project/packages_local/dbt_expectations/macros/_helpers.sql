{#- Shared pieces of the row-level tests: the row filter and the "offending rows" query. -#}

{% macro _row_condition_sql(row_condition) -%}
    {%- if row_condition -%}({{ row_condition }}){%- else -%}true{%- endif -%}
{%- endmacro %}


{% macro _rows_where_not(model, expression, row_condition=None) -%}
select *
from {{ model }}
where
    {{ dbt_expectations._row_condition_sql(row_condition) }}
    and not ({{ expression }})
{%- endmacro %}


{% macro _quoted_list(values, quote_values=True) -%}
    {%- for value in values -%}
        {%- if quote_values -%}
            '{{ value | string | replace("'", "''") }}'
        {%- else -%}
            {{ value }}
        {%- endif -%}
        {%- if not loop.last %}, {% endif -%}
    {%- endfor -%}
{%- endmacro %}
