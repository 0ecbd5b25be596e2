with

source as (
    select * from {{ source('raw', 'labels') }}
),

typed as (
    select
        cast(as_of as date) as as_of,
        cast(user_id as text) as user_id,
        cast(period_start as date) as period_start,
        cast(churn_label as boolean) as churn_label
    from source
),

deduplicated as (
    select
        *,
        row_number() over (
            partition by as_of, user_id, period_start
            order by churn_label
        ) as row_num
    from typed
),

final as (
    select
        as_of,
        user_id,
        period_start,
        churn_label
    from deduplicated
    where row_num = 1
)

select * from final
