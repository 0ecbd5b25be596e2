with

source as (
    select * from {{ source('raw', 'tickets') }}
),

typed as (
    select
        cast(as_of as date) as as_of,
        cast(ticket_id as text) as ticket_id,
        cast(user_id as text) as user_id,
        cast(opened_at as timestamptz) as opened_at,
        cast(resolved_at as timestamptz) as resolved_at,
        cast(category as text) as category
    from source
),

deduplicated as (
    select
        *,
        row_number() over (
            partition by as_of, ticket_id
            order by user_id, opened_at, resolved_at, category
        ) as row_num
    from typed
),

final as (
    select
        as_of,
        ticket_id,
        user_id,
        opened_at,
        resolved_at,
        category
    from deduplicated
    where row_num = 1
)

select * from final
