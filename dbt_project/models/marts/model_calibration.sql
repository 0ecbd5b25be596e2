{#- Calibration of each model version per scored month: predicted against realized churn by risk decile. -#}

with

scores as (
    select * from {{ ref('int_model_scores__labelled') }}
    where churn_label is not null
),

final as (
    select
        as_of,
        role,
        model_version,
        risk_decile,
        count(*) as n_users,
        count(*) filter (where churn_label) as n_churned,
        avg(churn_probability) as mean_predicted,
        avg(case when churn_label then 1.0 else 0.0 end)::double precision as realized_churn_rate,
        min(churn_probability) as min_predicted,
        max(churn_probability) as max_predicted
    from scores
    group by as_of, role, model_version, risk_decile
)

select * from final
