{{ config(unique_key='period_start', indexes=[{'columns': ['period_start']}]) }}

with

labels as (
    select
        as_of,
        user_id,
        period_start,
        churn_label
    from {{ ref('stg_raw__labels') }}
    where {{ lookback_filter(1) }}
),

-- a month of the aggregated layout carries the outcomes of its own month end
month_end_labels as (
    select
        as_of,
        user_id,
        as_of as period_start,
        churn_label
    from {{ ref('stg_raw__labels_at_month_end') }}
    where {{ lookback_filter(1) }}
),

-- one outcome per user and period: the one delivered last (an event drop after an aggregated month
-- delivers that month's outcomes again)
newest as (
    select
        *,
        row_number() over (partition by user_id, period_start order by as_of desc) as row_num
    from (
        select * from labels
        union all
        select * from month_end_labels
    ) as delivered
),

final as (
    select
        user_id,
        {{ business_timestamp('period_start') }} as period_start,
        churn_label
    from newest
    where row_num = 1
)

select * from final
