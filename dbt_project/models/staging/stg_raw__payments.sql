with

source as (
    select * from {{ source('raw', 'payments') }}
),

typed as (
    select
        cast(as_of as date) as as_of,
        cast(payment_id as text) as payment_id,
        cast(user_id as text) as user_id,
        cast(attempted_at as timestamptz) as attempted_at,
        cast(amount as numeric(12, 2)) as amount,
        cast(status as text) as status
    from source
),

deduplicated as (
    select
        *,
        row_number() over (
            partition by as_of, payment_id
            order by user_id, attempted_at, amount, status
        ) as row_num
    from typed
),

final as (
    select
        as_of,
        payment_id,
        user_id,
        attempted_at,
        amount,
        status
    from deduplicated
    where row_num = 1
)

select * from final
