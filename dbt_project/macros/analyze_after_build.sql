{% macro analyze_after_build() -%}
    {#- post-hook of every mart and snapshot: refresh the planner's statistics of the relation just
        written. Marts and snapshots grow by a month per run (delete+insert, SCD2 merge), and the
        point-in-time joins that read them next (Feast training sets, batch scoring) are planned
        from these statistics; left to autovacuum, a join planned on last month's statistics
        picks nested loops and runs for minutes instead of a second. Views have none to refresh. -#}
    {%- if execute and model.config.materialized in ('table', 'incremental', 'snapshot') -%}
        analyze {{ this }}
    {%- endif -%}
{%- endmacro %}
