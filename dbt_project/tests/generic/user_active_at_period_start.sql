{#- A label for period_start P is about a user who was an active subscriber at P: the user has a
    row in `to` (the subscriptions) of the drop with as_of = P. Labels whose P is not a loaded
    drop are not judged here (the first loaded drop may follow an unloaded one). -#}
{% test user_active_at_period_start(model, column_name, to, period_column='period_start', as_of_column='as_of') %}
with

labels as (
    select * from {{ model }}
),

periods as (
    select distinct {{ period_column }} as period_as_of
    from labels
),

loaded_periods as (
    select periods.period_as_of
    from periods
    where exists (
        select 1 from {{ source('raw', 'load_log') }} as load_log
        where load_log.as_of = periods.period_as_of
    )
),

active as (
    select
        subscriptions.{{ column_name }} as active_key,
        subscriptions.{{ as_of_column }} as active_as_of
    from {{ to }} as subscriptions
    where subscriptions.{{ as_of_column }} = any(array(select period_as_of from loaded_periods))
)

select labels.*
from labels
where
    labels.{{ period_column }} in (select period_as_of from loaded_periods)
    and not exists (
        select 1
        from active
        where
            active.active_as_of = labels.{{ period_column }}
            and active.active_key = labels.{{ column_name }}
    )
{% endtest %}
