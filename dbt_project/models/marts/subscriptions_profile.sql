{{ config(indexes=[{'columns': ['as_of']}]) }}

with

months as (
    {{ as_of_spine() }}
),

subscriptions as (
    select * from {{ ref('snap_subscriptions') }}
),

users as (
    select * from {{ ref('snap_users') }}
),

tenure as (
    select
        as_of,
        user_id,
        months_active
    from {{ ref('stg_raw__subscriptions') }}
    where {{ lookback_filter(1) }}
),

plans_at_as_of as (
    select
        subscriptions.*,
        months.as_of_date,
        months.as_of
    from months
    inner join subscriptions
        on
            months.as_of >= subscriptions.dbt_valid_from
            and (months.as_of < subscriptions.dbt_valid_to or subscriptions.dbt_valid_to is null)
),

profiles_at_as_of as (
    select
        users.*,
        months.as_of
    from months
    inner join users
        on
            months.as_of >= users.dbt_valid_from
            and (months.as_of < users.dbt_valid_to or users.dbt_valid_to is null)
),

final as (
    select
        plans_at_as_of.user_id,
        plans_at_as_of.as_of,
        profiles_at_as_of.gender,
        profiles_at_as_of.senior_citizen,
        profiles_at_as_of.partner,
        profiles_at_as_of.dependents,
        plans_at_as_of.contract_type,
        tenure.months_active,
        cast(plans_at_as_of.monthly_fee as double precision) as monthly_fee,
        plans_at_as_of.paperless_billing,
        plans_at_as_of.payment_method,
        plans_at_as_of.net_service,
        plans_at_as_of.plan_stream_tv,
        plans_at_as_of.plan_stream_movies,
        plans_at_as_of.add_on_security,
        plans_at_as_of.add_on_backup,
        plans_at_as_of.add_on_device_protection,
        plans_at_as_of.add_on_tech_support
    from plans_at_as_of
    left join profiles_at_as_of
        on
            plans_at_as_of.user_id = profiles_at_as_of.user_id
            and plans_at_as_of.as_of = profiles_at_as_of.as_of
    left join tenure
        on
            plans_at_as_of.user_id = tenure.user_id
            and plans_at_as_of.as_of_date = tenure.as_of
)

select * from final
