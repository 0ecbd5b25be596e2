with

source as (
    select * from {{ source('raw', 'support_agg_90d') }}
),

final as (
    select
        cast(as_of as date) as as_of,
        cast(user_id as text) as user_id,
        cast(support_tickets_90d as integer) as support_tickets_90d,
        cast(ticket_avg_resolution_hrs_90d as double precision) as ticket_avg_resolution_hrs_90d
    from source
)

select * from final
