with

source as (
    select * from {{ source('raw', 'payments_agg_90d') }}
),

final as (
    select
        cast(as_of as date) as as_of,
        cast(user_id as text) as user_id,
        cast(failed_payments_90d as integer) as failed_payments_90d
    from source
)

select * from final
