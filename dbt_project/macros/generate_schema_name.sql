{#- Layers build into schemas named exactly `staging`, `snapshots` and `marts` (what Feast and
    analysts read); anything without a custom schema goes to the target schema. A full refresh sets
    the `schema_suffix` var: it builds beside them (`marts__rebuild`, ...), then swaps them in. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}{{ var('schema_suffix', '') }}
    {%- endif -%}
{%- endmacro %}
