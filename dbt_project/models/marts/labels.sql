{{ config(unique_key='period_start', indexes=[{'columns': ['period_start']}]) }}

with

labels as (
    select * from {{ ref('stg_raw__labels') }}
    where {{ lookback_filter(1) }}
),

final as (
    select
        user_id,
        {{ business_timestamp('period_start') }} as period_start,
        churn_label
    from labels
)

select * from final
