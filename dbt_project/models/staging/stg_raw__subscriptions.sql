with

source as (
    select * from {{ source('raw', 'subscriptions') }}
),

typed as (
    select
        cast(as_of as date) as as_of,
        cast(user_id as text) as user_id,
        cast(contract_type as text) as contract_type,
        cast(months_active as integer) as months_active,
        cast(monthly_fee as numeric(12, 2)) as monthly_fee,
        cast(paperless_billing as boolean) as paperless_billing,
        cast(payment_method as text) as payment_method,
        cast(net_service as text) as net_service,
        cast(plan_stream_tv as boolean) as plan_stream_tv,
        cast(plan_stream_movies as boolean) as plan_stream_movies,
        cast(add_on_security as boolean) as add_on_security,
        cast(add_on_backup as boolean) as add_on_backup,
        cast(add_on_device_protection as boolean) as add_on_device_protection,
        cast(add_on_tech_support as boolean) as add_on_tech_support
    from source
),

deduplicated as (
    select
        *,
        row_number() over (
            partition by as_of, user_id
            order by
                contract_type, months_active, monthly_fee, paperless_billing, payment_method,
                net_service, plan_stream_tv, plan_stream_movies, add_on_security, add_on_backup,
                add_on_device_protection, add_on_tech_support
        ) as row_num
    from typed
),

final as (
    select
        as_of,
        user_id,
        contract_type,
        months_active,
        monthly_fee,
        paperless_billing,
        payment_method,
        net_service,
        plan_stream_tv,
        plan_stream_movies,
        add_on_security,
        add_on_backup,
        add_on_device_protection,
        add_on_tech_support
    from deduplicated
    where row_num = 1
)

select * from final
