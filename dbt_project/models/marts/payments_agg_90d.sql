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
        cast(coalesce(aggregated.failed_payments_90d, 0) as bigint) as failed_payments_90d
    from subscribers
    left join aggregated
        on
            subscribers.user_id = aggregated.user_id
            and subscribers.as_of = aggregated.as_of
)

select * from final
