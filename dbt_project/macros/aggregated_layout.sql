{#- Months of the aggregated layout (`streamflow ingest --layout aggregated`): a month whose windowed values
    come from its own files instead of from events. A month is of that layout when its raw.load_log entry
    lists the file of `table`. -#}
{% macro months_with_layout(months, table, days) -%}
    {#- Every month of `months` (an as_of spine) with how its `days`-day window is fed:
          is_imported     the month is of the aggregated layout: its values are raw.<table>'s
          carried_from    else: the newest aggregated month before it (null when there is none)
          carried_share   the part of the window that lies before the events begin (the days after
                          carried_from): that month's value, prorated by it, stands in for the missing
                          events; 0 when the window does not reach back to it -#}
select
    {{ months }}.as_of,
    {{ months }}.as_of_date,
    imported.as_of is not null as is_imported,
    carried.as_of as carried_from,
    cast(greatest(coalesce(carried.as_of - {{ months }}.as_of_date + {{ days }}, 0), 0) as double precision)
    / {{ days }} as carried_share
from {{ months }}
left join {{ source('raw', 'load_log') }} as imported
    on
        {{ months }}.as_of_date = imported.as_of
        and imported.files ? '{{ table }}'
left join lateral (
    select max(earlier.as_of) as as_of
    from {{ source('raw', 'load_log') }} as earlier
    where
        earlier.files ? '{{ table }}'
        and earlier.as_of < {{ months }}.as_of_date
) as carried on true
{%- endmacro %}
