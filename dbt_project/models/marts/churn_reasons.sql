{{
    config(
        materialized='view',
    )
}}

with

predictions as (
    select * from {{ ref('churn_predictions') }}
),

scores as (
    select
        user_id,
        {{ business_timestamp('as_of') }} as as_of,
        reasons
    from {{ source('ml', 'churn_scores') }}
    where reasons is not null
),

reasons as (
    select
        scores.user_id,
        scores.as_of,
        directions.direction,
        listed.position::integer as reason_rank,
        listed.reason ->> 'feature' as feature,
        listed.reason ->> 'label' as feature_label,
        (listed.reason ->> 'contribution')::double precision as contribution
    from scores
    cross join (values ('up'), ('down')) as directions (direction)
    cross join
        lateral jsonb_array_elements(scores.reasons -> directions.direction)
        with ordinality as listed (reason, position)
),

segments as (
    select
        as_of,
        contract_type,
        risk_decile,
        count(*) as users_in_segment
    from predictions
    group by as_of, contract_type, risk_decile
),

aggregated as (
    select
        reasons.as_of,
        predictions.contract_type,
        predictions.risk_decile,
        reasons.direction,
        reasons.feature,
        max(reasons.feature_label) as feature_label,
        count(*) as users_with_reason,
        count(*) filter (where reasons.reason_rank = 1) as users_with_it_first,
        avg(reasons.contribution) as mean_contribution,
        sum(reasons.contribution) as total_contribution
    from reasons
    inner join predictions
        on
            reasons.user_id = predictions.user_id
            and reasons.as_of = predictions.as_of
    group by
        reasons.as_of,
        predictions.contract_type,
        predictions.risk_decile,
        reasons.direction,
        reasons.feature
),

final as (
    select
        aggregated.as_of,
        aggregated.contract_type,
        aggregated.risk_decile,
        aggregated.direction,
        aggregated.feature,
        aggregated.feature_label,
        aggregated.users_with_reason,
        aggregated.users_with_it_first,
        segments.users_in_segment,
        aggregated.users_with_reason::double precision / segments.users_in_segment as share_of_segment,
        aggregated.mean_contribution,
        aggregated.total_contribution
    from aggregated
    inner join segments
        on
            aggregated.as_of = segments.as_of
            and aggregated.contract_type is not distinct from segments.contract_type
            and aggregated.risk_decile = segments.risk_decile
)

select * from final
