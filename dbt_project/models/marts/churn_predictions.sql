{{
    config(
        materialized='view',
        pre_hook=["{{ ensure_churn_scores_table() }}", "{{ ensure_shadow_scores_table() }}"],
    )
}}

with

scores as (
    select * from {{ source('ml', 'churn_scores') }}
),

profiles as (
    select * from {{ ref('subscriptions_profile') }}
),

scored as (
    select
        user_id,
        {{ business_timestamp('as_of') }} as as_of,
        churn_probability,
        churn_label_predicted,
        model_version,
        scored_at
    from scores
),

final as (
    select
        scored.user_id,
        scored.as_of,
        scored.churn_probability,
        scored.churn_label_predicted,
        ntile(10) over (
            partition by scored.as_of
            order by scored.churn_probability desc, scored.user_id asc
        ) as risk_decile,
        profiles.contract_type,
        profiles.monthly_fee,
        scored.churn_probability * profiles.monthly_fee as expected_revenue_at_risk,
        scored.model_version,
        scored.scored_at
    from scored
    left join profiles
        on
            scored.user_id = profiles.user_id
            and scored.as_of = profiles.as_of
)

select * from final
