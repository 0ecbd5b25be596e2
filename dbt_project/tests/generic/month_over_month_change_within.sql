{#- Active subscribers (distinct values of the column) of the drop being processed against the
    previous loaded drop: fails when the relative change exceeds `max_change`, and always when the
    drop has none. Give the test `where: "as_of between __previous_as_of__ and __as_of__"`. -#}
{% test month_over_month_change_within(model, column_name, max_change, as_of_column='as_of') %}
with

counts as (
    select
        {{ as_of_column }} as drop_as_of,
        count(distinct {{ column_name }}) as subscribers
    from {{ model }}
    group by {{ as_of_column }}
),

compared as (
    select
        {{ date_literal(as_of_date()) }} as as_of,
        previous.drop_as_of as previous_as_of,
        coalesce(current_month.subscribers, 0) as subscribers,
        previous.subscribers as previous_subscribers
    from (select 1 as one) as anchor
    left join counts as current_month
        on current_month.drop_as_of = {{ date_literal(as_of_date()) }}
    left join lateral (
        select counts.drop_as_of, counts.subscribers
        from counts
        where counts.drop_as_of < {{ date_literal(as_of_date()) }}
        order by counts.drop_as_of desc
        limit 1
    ) as previous on true
),

judged as (
    select
        *,
        round(abs(subscribers - previous_subscribers)::numeric / nullif(previous_subscribers, 0), 4)
            as change_fraction,
        {{ max_change }} as max_change
    from compared
)

select * from judged
where
    subscribers = 0
    or change_fraction > {{ max_change }}
{% endtest %}
