{#- The users of the drop being processed: what snap_users records for that month. -#}
with

users as (
    select * from {{ ref('stg_raw__users') }}
),

final as (
    select
        user_id,
        signup_date,
        gender,
        senior_citizen,
        partner,
        dependents
    from users
    where as_of = {{ date_literal(as_of_date()) }}
)

select * from final
