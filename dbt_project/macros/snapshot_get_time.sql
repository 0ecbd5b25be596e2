{#- Snapshots take "now" from this macro for new versions and for hard deletes. StreamFlow's now
    is business time: the drop being processed, at 00:00 UTC. So dbt_valid_from/dbt_valid_to are
    drop dates, and a rebuild from the same drops gives the same snapshot. -#}
{% macro postgres__snapshot_get_time() -%}
    {{ business_timestamp_literal(as_of_date()) }}
{%- endmacro %}


{% macro assert_snapshot_month_in_order() -%}
    {#- pre-hook of every snapshot: one month per run, in as_of order. Processing an older month
        after a newer one would rewrite history; a full refresh (`streamflow build --full-refresh`)
        replays the months instead. -#}
    {%- if execute -%}
        {%- set existing = adapter.get_relation(database=this.database, schema=this.schema, identifier=this.identifier) -%}
        {%- if existing is not none -%}
            {%- set latest = _query_value(
                "select max(greatest(dbt_valid_from, coalesce(dbt_valid_to, dbt_valid_from)))::date::text from " ~ existing
            ) -%}
            {%- if latest is not none and latest > as_of_date() -%}
                {{ exceptions.raise_compiler_error(
                    this ~ " already holds drop " ~ latest ~ ", newer than as_of " ~ as_of_date()
                    ~ ": snapshots advance one month at a time. Rebuild them from the raw history with "
                    ~ "`streamflow build --full-refresh`."
                ) }}
            {%- endif -%}
        {%- endif -%}
    {%- endif -%}
    select 1
{%- endmacro %}
