{#- Business time. Every run processes one drop month: var('as_of') when given, else the newest
    drop in raw.load_log. Nothing here reads the wall clock. -#}

{% macro load_log_relation() -%}
    {%- set node = graph.sources['source.streamflow.raw.load_log'] -%}
    {{ return(api.Relation.create(database=node.database, schema=node.schema, identifier=node.identifier)) }}
{%- endmacro %}


{% macro _query_value(sql) -%}
    {%- set result = run_query(sql) -%}
    {{ return(result.columns[0].values()[0] if result and result.rows | length > 0 else none) }}
{%- endmacro %}


{% macro _validated_as_of_var() -%}
    {%- set requested = var('as_of', none) -%}
    {%- if requested is none or requested == '' -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set text = requested | string | trim -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', text) -%}
        {{ exceptions.raise_compiler_error("var as_of must be a date YYYY-MM-DD, got '" ~ text ~ "'") }}
    {%- endif -%}
    {{ return(text) }}
{%- endmacro %}


{% macro as_of_date() -%}
    {#- The drop month being processed, as the text 'YYYY-MM-DD'. -#}
    {%- set requested = _validated_as_of_var() -%}
    {%- if requested is not none -%}
        {{ return(requested) }}
    {%- endif -%}
    {%- if not execute -%}
        {{ return('1970-01-01') }}
    {%- endif -%}
    {%- set newest = _query_value("select max(as_of)::text from " ~ load_log_relation()) -%}
    {%- if newest is none -%}
        {{ exceptions.raise_compiler_error("No drop is loaded (raw.load_log is empty): run `streamflow ingest DROP_DIR` first.") }}
    {%- endif -%}
    {{ return(newest) }}
{%- endmacro %}


{% macro previous_as_of_date() -%}
    {#- The loaded drop before the one being processed; the same month when there is none. -#}
    {%- set current = as_of_date() -%}
    {%- if not execute -%}
        {{ return(current) }}
    {%- endif -%}
    {%- set previous = _query_value(
        "select max(as_of)::text from " ~ load_log_relation() ~ " where as_of < '" ~ current ~ "'::date"
    ) -%}
    {{ return(previous or current) }}
{%- endmacro %}


{% macro date_literal(day) -%}
    '{{ day }}'::date
{%- endmacro %}


{% macro business_timestamp_literal(day) -%}
    {#- A drop date as a point in time: that day at 00:00 UTC, the convention of every as_of column. -#}
    '{{ day }} 00:00:00+00'::timestamptz
{%- endmacro %}


{% macro business_timestamp(date_expression) -%}
    ({{ date_expression }}::timestamp at time zone 'UTC')
{%- endmacro %}


{% macro window_start(date_expression, days) -%}
    {#- First instant of an N-day window as of date D: D + 1 day - N days, 00:00 UTC (inclusive). -#}
    (({{ date_expression }} + 1 - {{ days }})::timestamp at time zone 'UTC')
{%- endmacro %}


{% macro window_end(date_expression) -%}
    {#- End of every window as of date D: D + 1 day, 00:00 UTC (exclusive). -#}
    (({{ date_expression }} + 1)::timestamp at time zone 'UTC')
{%- endmacro %}


{% macro as_of_spine() -%}
    {#- The drop months a mart computes in this run: the month being processed on an incremental
        run; every loaded month up to it on a first run or a full refresh. -#}
select
    as_of as as_of_date,
    {{ business_timestamp('as_of') }} as as_of
from {{ source('raw', 'load_log') }}
where
    as_of <= {{ date_literal(as_of_date()) }}
    {%- if is_incremental() %}
    and as_of = {{ date_literal(as_of_date()) }}
    {%- endif %}
{%- endmacro %}


{% macro lookback_filter(days) -%}
    {#- Drops that can hold events of an N-day window (events sit in their drop's month), so an
        incremental run reads a few partitions of raw.* instead of the whole history. -#}
    as_of <= {{ date_literal(as_of_date()) }}
    {%- if is_incremental() %}
    and as_of >= {{ date_literal(as_of_date()) }} + 1 - {{ days }}
    {%- endif %}
{%- endmacro %}


{% macro assert_as_of_is_loaded() -%}
    {#- on-run-start: refuse a month that is not loaded, before anything is built from it. -#}
    {%- if execute -%}
        {%- set relation = load_log_relation() -%}
        {%- set exists = _query_value("select to_regclass('" ~ relation ~ "') is not null") -%}
        {%- if not exists -%}
            {{ exceptions.raise_compiler_error(relation ~ " does not exist: load a drop first (streamflow ingest DROP_DIR).") }}
        {%- endif -%}
        {%- set requested = _validated_as_of_var() -%}
        {%- if requested is not none -%}
            {%- set loaded = _query_value(
                "select count(*) from " ~ relation ~ " where as_of = '" ~ requested ~ "'::date"
            ) -%}
            {%- if loaded | int == 0 -%}
                {%- set months = _query_value("select string_agg(as_of::text, ', ' order by as_of) from " ~ relation) -%}
                {{ exceptions.raise_compiler_error(
                    "as_of " ~ requested ~ " is not a loaded drop. Loaded: " ~ (months or "none")
                ) }}
            {%- endif -%}
        {%- endif -%}
    {%- endif -%}
    select 1
{%- endmacro %}
