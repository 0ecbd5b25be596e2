{{ config(indexes=[{'columns': ['as_of']}]) }}

with

months as (
    {{ as_of_spine() }}
),

layout as (
    {{ months_with_layout('months', 'support_agg_90d', 90) }}
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
    select * from {{ ref('stg_raw__support_agg_90d') }}
    where {{ lookback_filter(90) }}
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
        avg(resolution_hours) as ticket_avg_resolution_hrs_90d,
        sum(resolution_hours) as resolution_hours_90d,
        count(resolution_hours) as resolved_tickets_90d
    from tickets_in_window
    group by as_of, user_id
),

carried_tickets as (
    select
        subscribers.user_id,
        subscribers.as_of,
        carried.ticket_avg_resolution_hrs_90d as carried_avg_hours,
        carried.support_tickets_90d * subscribers.carried_share as carried_tickets
    from subscribers
    inner join imported as carried
        on
            subscribers.user_id = carried.user_id
            and subscribers.carried_from = carried.as_of
    where subscribers.carried_share > 0 and carried.support_tickets_90d > 0
),

final as (
    select
        subscribers.user_id,
        subscribers.as_of,
        cast(case
            when subscribers.is_imported then coalesce(own.support_tickets_90d, 0)
            else coalesce(aggregated.support_tickets_90d, 0) + coalesce(round(carried_tickets.carried_tickets), 0)
        end as bigint) as support_tickets_90d,
        cast(case
            when subscribers.is_imported then coalesce(own.ticket_avg_resolution_hrs_90d, 0)
            when carried_tickets.carried_tickets is not null
                then (
                    coalesce(aggregated.resolution_hours_90d, 0)
                    + coalesce(carried_tickets.carried_avg_hours, 0) * carried_tickets.carried_tickets
                ) / (coalesce(aggregated.resolved_tickets_90d, 0) + carried_tickets.carried_tickets)
            else coalesce(aggregated.ticket_avg_resolution_hrs_90d, 0)
        end as double precision) as ticket_avg_resolution_hrs_90d
    from subscribers
    left join aggregated
        on
            subscribers.user_id = aggregated.user_id
            and subscribers.as_of = aggregated.as_of
    left join imported as own
        on
            subscribers.user_id = own.user_id
            and subscribers.as_of_date = own.as_of
    left join carried_tickets
        on
            subscribers.user_id = carried_tickets.user_id
            and subscribers.as_of = carried_tickets.as_of
)

select * from final
