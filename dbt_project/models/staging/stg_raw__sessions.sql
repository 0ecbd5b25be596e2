with

source as (
    select * from {{ source('raw', 'sessions') }}
),

typed as (
    select
        cast(as_of as date) as as_of,
        cast(session_id as text) as session_id,
        cast(user_id as text) as user_id,
        cast(started_at as timestamptz) as started_at,
        cast(device_id as text) as device_id,
        cast(minutes as numeric(12, 2)) as minutes,
        cast(skips as integer) as skips,
        cast(rebuffer_events as integer) as rebuffer_events
    from source
),

deduplicated as (
    select
        *,
        row_number() over (
            partition by as_of, session_id
            order by user_id, started_at, device_id, minutes, skips, rebuffer_events
        ) as row_num
    from typed
),

final as (
    select
        as_of,
        session_id,
        user_id,
        started_at,
        device_id,
        minutes,
        skips,
        rebuffer_events
    from deduplicated
    where row_num = 1
)

select * from final
