{#- The `where` config of tests may name the month being processed with placeholders, resolved
    when the test runs (configs in .yml cannot call project macros):
      __as_of__            the drop date, a date
      __as_of_ts__         the drop date at 00:00 UTC, a timestamptz (the marts' as_of)
      __previous_as_of__   the loaded drop before it (the same date when there is none) -#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}
        {%- if '__' in where -%}
            {%- set where = where
                | replace('__as_of_ts__', business_timestamp_literal(as_of_date()))
                | replace('__previous_as_of__', date_literal(previous_as_of_date()))
                | replace('__as_of__', date_literal(as_of_date())) -%}
        {%- endif -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {{ return(filtered) }}
    {%- else -%}
        {{ return(relation) }}
    {%- endif -%}
{%- endmacro %}
