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

{#- The one definition of ml.shadow_scores: a shadow model's probability next to the champion's for the
    same user and month. `source` says who scored the row: 'api' (the API, off the request path, for the
    users it answered) or 'batch' (`streamflow score`, every active user, when a shadow exists). One row
    per (month, shadow version, source, user): scoring again replaces it. Created, empty, by every build
    (pre_hook of the churn_predictions view), like ml.churn_scores. -#}
{% macro ensure_shadow_scores_table() -%}
    create schema if not exists ml;
    create table if not exists ml.shadow_scores (
        user_id text not null,
        as_of date not null,
        champion_version integer not null,
        champion_probability double precision not null check (champion_probability between 0 and 1),
        shadow_version integer not null,
        shadow_probability double precision not null check (shadow_probability between 0 and 1),
        source text not null check (source in ('api', 'batch')),
        scored_at timestamptz not null,
        primary key (as_of, shadow_version, source, user_id)
    );
    comment on table ml.shadow_scores is
        'A shadow model scored next to the champion on the same features: by the API off the request path (source api) and by streamflow score (source batch).';
{%- endmacro %}
