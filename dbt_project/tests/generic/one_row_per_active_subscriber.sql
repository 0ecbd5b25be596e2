{#- A mart has exactly the active subscribers of the drop being processed: every user_id of that
    drop's subscriptions, and nothing else. Pair it with `where: "as_of = __as_of_ts__"` (set for
    the marts folder). Returns missing and unexpected rows. -#}
{% test one_row_per_active_subscriber(model, subscriptions) %}
with

mart as (
    select
        user_id,
        as_of
    from {{ model }}
),

expected as (
    select
        user_id,
        {{ business_timestamp('as_of') }} as as_of
    from {{ subscriptions }}
    where as_of = {{ date_literal(as_of_date()) }}
),

missing as (
    select
        'missing from the mart' as problem,
        expected.user_id,
        expected.as_of
    from expected
    where not exists (
        select 1 from mart
        where mart.user_id = expected.user_id and mart.as_of = expected.as_of
    )
),

unexpected as (
    select
        'not an active subscriber' as problem,
        mart.user_id,
        mart.as_of
    from mart
    where not exists (
        select 1 from expected
        where expected.user_id = mart.user_id and expected.as_of = mart.as_of
    )
)

select * from missing
union all
select * from unexpected
{% endtest %}
