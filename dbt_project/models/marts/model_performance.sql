{#- Realized performance of each model version per scored month, once the month's labels are in:
    ROC-AUC by the Mann-Whitney rank formula (ties get their average rank), PR-AUC as average precision
    (precision at each distinct probability, weighted by the recall it adds), Brier score, top-decile
    lift and revenue at risk against revenue lost. -#}

with

scores as (
    select * from {{ ref('int_model_scores__labelled') }}
),

ranked as (
    select
        as_of,
        role,
        model_version,
        churn_probability,
        monthly_fee,
        risk_decile,
        case when churn_label then 1 else 0 end as churned,
        -- tied probabilities share the average of their ranks: the lowest rank + (ties - 1) / 2
        rank() over (
            partition by as_of, role, model_version
            order by churn_probability asc
        ) as lowest_rank,
        count(*) over (
            partition by as_of, role, model_version, churn_probability
        ) as tied,
        -- the default frame of an ordered window ends at the last tie: counts at or above the probability
        sum(case when churn_label then 1 else 0 end) over (
            partition by as_of, role, model_version
            order by churn_probability desc
        ) as churned_at_or_above,
        count(*) over (
            partition by as_of, role, model_version
            order by churn_probability desc
        ) as users_at_or_above
    from scores
    where churn_label is not null
),

metrics as (
    select
        as_of,
        role,
        model_version,
        count(*) as n_labelled,
        sum(churned) as n_churned,
        avg(churned::double precision) as churn_rate,
        avg(churn_probability) as mean_predicted,
        sum(churned * (lowest_rank + (tied - 1) / 2.0))::double precision as churned_rank_sum,
        sum(
            case when churned = 1 then churned_at_or_above::double precision / users_at_or_above end
        ) as precision_sum,
        avg(power(churn_probability - churned, 2)) as brier,
        avg(churned::double precision) filter (where risk_decile = 1) as top_decile_churn_rate,
        sum(churn_probability * monthly_fee) as revenue_at_risk,
        coalesce(sum(monthly_fee) filter (where churned = 1), 0) as revenue_lost
    from ranked
    group by as_of, role, model_version
),

scored as (
    select
        as_of,
        role,
        model_version,
        count(*) as n_scored
    from scores
    group by as_of, role, model_version
),

final as (
    select
        scored.as_of,
        scored.role,
        scored.model_version,
        scored.n_scored,
        coalesce(metrics.n_labelled, 0) as n_labelled,
        coalesce(metrics.n_churned, 0) as n_churned,
        metrics.churn_rate,
        metrics.mean_predicted,
        case
            when metrics.n_churned > 0 and metrics.n_churned < metrics.n_labelled
                then
                    (metrics.churned_rank_sum - metrics.n_churned * (metrics.n_churned + 1) / 2.0)
                    / (metrics.n_churned::double precision * (metrics.n_labelled - metrics.n_churned))
        end as roc_auc,
        case when metrics.n_churned > 0 then metrics.precision_sum / metrics.n_churned end as pr_auc,
        metrics.brier,
        metrics.top_decile_churn_rate,
        case
            when metrics.churn_rate > 0 then metrics.top_decile_churn_rate / metrics.churn_rate
        end as top_decile_lift,
        metrics.revenue_at_risk,
        metrics.revenue_lost
    from scored
    left join metrics
        on
            scored.as_of = metrics.as_of
            and scored.role = metrics.role
            and scored.model_version = metrics.model_version
)

select * from final
