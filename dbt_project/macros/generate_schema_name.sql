{#- Layers build into schemas named exactly `staging`, `snapshots` and `marts` (what Feast and
    analysts read); anything without a custom schema goes to the target schema. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
