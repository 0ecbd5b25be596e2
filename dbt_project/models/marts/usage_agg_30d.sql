{{ config(indexes=[{'columns': ['as_of']}]) }}

with

months as (
    {{ as_of_spine() }}
),

layout as (
    {{ months_with_layout('months', 'usage_agg_30d', 30) }}
),

subscribers as (
    select
        subscriptions_profile.user_id,
        subscriptions_profile.as_of,
        layout.as_of_date,
        layout.is_imported,
        layout.carried_from,
        layout.carried_share
    from {{ ref('subscriptions_profile') }} as subscriptions_profile
    inner join layout
        on subscriptions_profile.as_of = layout.as_of
),

imported as (
    select * from {{ ref('stg_raw__usage_agg_30d') }}
    where {{ lookback_filter(30) }}
),

sessions as (
    select * from {{ ref('stg_raw__sessions') }}
    where {{ lookback_filter(30) }}
),

sessions_in_window as (
    select
        months.as_of,
        sessions.user_id,
        sessions.device_id,
        sessions.minutes,
        sessions.skips,
        sessions.rebuffer_events,
        sessions.started_at >= {{ window_start('months.as_of_date', 7) }} as in_last_7_days
    from months
    inner join sessions
        on
            months.as_of_date >= sessions.as_of
            and {{ window_start('months.as_of_date', 30) }} <= sessions.started_at
            and {{ window_end('months.as_of_date') }} > sessions.started_at
),

aggregated as (
    select
        as_of,
        user_id,
        sum(minutes) as minutes_30d,
        count(distinct device_id) as unique_devices_30d,
        avg(minutes) filter (where in_last_7_days) as avg_session_mins_7d,
        sum(skips) filter (where in_last_7_days) as skips_7d,
        sum(rebuffer_events) filter (where in_last_7_days) as rebuffer_events_7d
    from sessions_in_window
    group by as_of, user_id
),

final as (
    select
        subscribers.user_id,
        subscribers.as_of,
        cast(case
            when subscribers.is_imported then coalesce(own.watch_hours_30d, 0)
            else
                coalesce(aggregated.minutes_30d / 60, 0)
                + coalesce(carried.watch_hours_30d * subscribers.carried_share, 0)
        end as double precision) as watch_hours_30d,
        cast(case
            when subscribers.is_imported then coalesce(own.avg_session_mins_7d, 0)
            else coalesce(aggregated.avg_session_mins_7d, 0)
        end as double precision) as avg_session_mins_7d,
        cast(case
            when subscribers.is_imported then coalesce(own.unique_devices_30d, 0)
            when subscribers.carried_share > 0
                then greatest(coalesce(aggregated.unique_devices_30d, 0), carried.unique_devices_30d)
            else coalesce(aggregated.unique_devices_30d, 0)
        end as bigint) as unique_devices_30d,
        cast(case
            when subscribers.is_imported then coalesce(own.skips_7d, 0)
            else coalesce(aggregated.skips_7d, 0)
        end as bigint) as skips_7d,
        cast(case
            when subscribers.is_imported then coalesce(own.rebuffer_events_7d, 0)
            else coalesce(aggregated.rebuffer_events_7d, 0)
        end as bigint) as rebuffer_events_7d
    from subscribers
    left join aggregated
        on
            subscribers.user_id = aggregated.user_id
            and subscribers.as_of = aggregated.as_of
    left join imported as own
        on
            subscribers.user_id = own.user_id
            and subscribers.as_of_date = own.as_of
    left join imported as carried
        on
            subscribers.user_id = carried.user_id
            and subscribers.carried_from = carried.as_of
)

select * from final
