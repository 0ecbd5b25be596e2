{#- The one definition of the table `streamflow score` writes (ml/score.py only writes rows, and
    refuses with "run `streamflow build` first" while the table is missing). Every build runs it as
    the pre_hook of the churn_predictions view, so the table exists, empty, before the first
    scoring run. Columns added later come with an `add column if not exists` too, so a warehouse
    built by an earlier version gains them at its next build (its rows keep null there). -#}
{% macro ensure_churn_scores_table() -%}
    create schema if not exists ml;
    create table if not exists ml.churn_scores (
        user_id text not null,
        as_of date not null,
        churn_probability double precision not null check (churn_probability between 0 and 1),
        churn_label_predicted boolean not null,
        model_version integer not null,
        scored_at timestamptz not null,
        reasons jsonb,
        primary key (as_of, user_id)
    );
    alter table ml.churn_scores add column if not exists reasons jsonb;
    comment on table ml.churn_scores is
        'Churn probability of every user active at as_of, scored by the champion model (streamflow score).';
    comment on column ml.churn_scores.reasons is
        'The prediction''s top reasons: {"base", "margin", "up": [...], "down": [...]}, each reason {"feature", "label", "value", "contribution"} (log-odds).'
{%- endmacro %}
