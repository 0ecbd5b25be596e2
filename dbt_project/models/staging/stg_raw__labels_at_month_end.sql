with

source as (
    select * from {{ source('raw', 'labels_at_month_end') }}
),

final as (
    select
        cast(as_of as date) as as_of,
        cast(user_id as text) as user_id,
        cast(churn_label as boolean) as churn_label
    from source
)

select * from final
