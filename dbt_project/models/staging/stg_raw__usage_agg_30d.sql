with

source as (
    select * from {{ source('raw', 'usage_agg_30d') }}
),

final as (
    select
        cast(as_of as date) as as_of,
        cast(user_id as text) as user_id,
        cast(watch_hours_30d as double precision) as watch_hours_30d,
        cast(avg_session_mins_7d as double precision) as avg_session_mins_7d,
        cast(unique_devices_30d as integer) as unique_devices_30d,
        cast(skips_7d as integer) as skips_7d,
        cast(rebuffer_events_7d as integer) as rebuffer_events_7d
    from source
)

select * from final
