{{ config(indexes=[{'columns': ['as_of']}]) }}

with

months as (
    {{ as_of_spine() }}
),

subscribers as (
    select
        subscriptions_profile.user_id,
        subscriptions_profile.as_of
    from {{ ref('subscriptions_profile') }} as subscriptions_profile
    inner join months
        on subscriptions_profile.as_of = months.as_of
),

tickets as (
    select * from {{ ref('stg_raw__tickets') }}
    where {{ lookback_filter(90) }}
),

tickets_in_window as (
    select
        months.as_of,
        tickets.user_id,
        case
            when tickets.resolved_at < {{ window_end('months.as_of_date') }}
                then extract(epoch from tickets.resolved_at - tickets.opened_at) / 3600
        end as resolution_hours
    from months
    inner join tickets
        on
            months.as_of_date >= tickets.as_of
            and {{ window_start('months.as_of_date', 90) }} <= tickets.opened_at
            and {{ window_end('months.as_of_date') }} > tickets.opened_at
),

aggregated as (
    select
        as_of,
        user_id,
        count(*) as support_tickets_90d,
        avg(resolution_hours) as ticket_avg_resolution_hrs_90d
    from tickets_in_window
    group by as_of, user_id
),

final as (
    select
        subscribers.user_id,
        subscribers.as_of,
        cast(coalesce(aggregated.support_tickets_90d, 0) as bigint) as support_tickets_90d,
        cast(coalesce(aggregated.ticket_avg_resolution_hrs_90d, 0) as double precision)
            as ticket_avg_resolution_hrs_90d
    from subscribers
    left join aggregated
        on
            subscribers.user_id = aggregated.user_id
            and subscribers.as_of = aggregated.as_of
)

select * from final
