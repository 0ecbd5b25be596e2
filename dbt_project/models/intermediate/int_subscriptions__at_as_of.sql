{#- The plans of the drop being processed: what snap_subscriptions records for that month.
    months_active is left out on purpose: it grows every month, and a version per month would
    hide the real plan changes. The marts read it from staging. -#}
with

subscriptions as (
    select * from {{ ref('stg_raw__subscriptions') }}
),

final as (
    select
        user_id,
        contract_type,
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
    from subscriptions
    where as_of = {{ date_literal(as_of_date()) }}
)

select * from final
