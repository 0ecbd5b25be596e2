{#- The table `streamflow score` writes (ml/score.py creates it the same way). Created here too,
    empty, so the churn_predictions view can be built before the first scoring run. -#}
{% macro ensure_churn_scores_table() -%}
    create schema if not exists ml;
    create table if not exists ml.churn_scores (
        user_id text not null,
        as_of date not null,
        churn_probability double precision not null check (churn_probability between 0 and 1),
        churn_label_predicted boolean not null,
        model_version integer not null,
        scored_at timestamptz not null,
        primary key (as_of, user_id)
    )
{%- endmacro %}
