{#- Every batch score of a month whose labels have arrived, champion and shadow side by side, with the
    realized outcome and the plan's monthly fee: the input of model_performance and model_calibration.
    ml.churn_scores and ml.shadow_scores are created, empty, by churn_predictions' pre_hook: built after it. -#}
-- depends_on: {{ ref('churn_predictions') }}

with

labelled_months as (
    select distinct period_start as as_of
    from {{ ref('labels') }}
),

champion as (
    select
        user_id,
        {{ business_timestamp('as_of') }} as as_of,
        'champion' as role,  -- noqa: RF04
        model_version,
        churn_probability
    from {{ source('ml', 'churn_scores') }}
),

shadow as (
    select
        user_id,
        {{ business_timestamp('as_of') }} as as_of,
        'shadow' as role,  -- noqa: RF04
        shadow_version as model_version,
        shadow_probability as churn_probability
    from {{ source('ml', 'shadow_scores') }}
    where source = 'batch'
),

scores as (
    select * from champion
    union all
    select * from shadow
),

joined as (
    select
        scores.as_of,
        scores.role,
        scores.model_version,
        scores.user_id,
        scores.churn_probability,
        labels.churn_label,
        profiles.monthly_fee
    from scores
    inner join labelled_months
        on scores.as_of = labelled_months.as_of
    left join {{ ref('labels') }} as labels
        on
            scores.user_id = labels.user_id
            and scores.as_of = labels.period_start
    left join {{ ref('subscriptions_profile') }} as profiles
        on
            scores.user_id = profiles.user_id
            and scores.as_of = profiles.as_of
),

final as (
    select
        *,
        case
            when churn_label is not null
                then
                    ntile(10) over (
                        partition by as_of, role, model_version, churn_label is null
                        order by churn_probability desc, user_id asc
                    )
        end as risk_decile
    from joined
)

select * from final
