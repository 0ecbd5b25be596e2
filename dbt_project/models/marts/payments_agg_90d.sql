{{ config(indexes=[{'columns': ['as_of']}]) }}

with

months as (
    {{ as_of_spine() }}
),

layout as (
    {{ months_with_layout('months', 'payments_agg_90d', 90) }}
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
    select * from {{ ref('stg_raw__payments_agg_90d') }}
    where {{ lookback_filter(90) }}
),

payments as (
    select * from {{ ref('stg_raw__payments') }}
    where {{ lookback_filter(90) }}
),

payments_in_window as (
    select
        months.as_of,
        payments.user_id,
        payments.status
    from months
    inner join payments
        on
            months.as_of_date >= payments.as_of
            and {{ window_start('months.as_of_date', 90) }} <= payments.attempted_at
            and {{ window_end('months.as_of_date') }} > payments.attempted_at
),

aggregated as (
    select
        as_of,
        user_id,
        count(*) filter (where status = 'failed') as failed_payments_90d
    from payments_in_window
    group by as_of, user_id
),

final as (
    select
        subscribers.user_id,
        subscribers.as_of,
        cast(case
            when subscribers.is_imported then coalesce(own.failed_payments_90d, 0)
            else
                coalesce(aggregated.failed_payments_90d, 0)
                + coalesce(round(carried.failed_payments_90d * subscribers.carried_share), 0)
        end as bigint) as failed_payments_90d
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
