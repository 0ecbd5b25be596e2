with

source as (
    select * from {{ source('raw', 'users') }}
),

typed as (
    select
        cast(as_of as date) as as_of,
        cast(user_id as text) as user_id,
        cast(signup_date as date) as signup_date,
        cast(gender as text) as gender,
        cast(senior_citizen as boolean) as senior_citizen,
        cast(partner as boolean) as partner,
        cast(dependents as boolean) as dependents
    from source
),

deduplicated as (
    select
        *,
        row_number() over (
            partition by as_of, user_id
            order by signup_date, gender, senior_citizen, partner, dependents
        ) as row_num
    from typed
),

final as (
    select
        as_of,
        user_id,
        signup_date,
        gender,
        senior_citizen,
        partner,
        dependents
    from deduplicated
    where row_num = 1
)

select * from final
