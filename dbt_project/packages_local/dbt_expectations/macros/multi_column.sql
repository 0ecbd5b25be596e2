{% test expect_compound_columns_to_be_unique(
    model, column_list, quote_columns=False, ignore_row_if="all_values_are_missing", row_condition=None
) %}
    {%- if not column_list -%}
        {{ exceptions.raise_compiler_error("`column_list` must be a list of columns. Got: '" ~ column_list ~ "'") }}
    {%- endif -%}
    {%- set columns = [] -%}
    {%- for column in column_list -%}
        {%- do columns.append(adapter.quote(column) if quote_columns else column) -%}
    {%- endfor -%}
    {%- if ignore_row_if == "all_values_are_missing" -%}
        {%- set ignore_sql = "not (" ~ (columns | join(" is null and ")) ~ " is null)" -%}
    {%- elif ignore_row_if == "any_value_is_missing" -%}
        {%- set ignore_sql = columns | join(" is not null and ") ~ " is not null" -%}
    {%- else -%}
        {{ exceptions.raise_compiler_error(
            "`ignore_row_if` must be all_values_are_missing or any_value_is_missing. Got: '" ~ ignore_row_if ~ "'"
        ) }}
    {%- endif %}
with counted as (
    select
        *,
        count(*) over (partition by {{ columns | join(", ") }}) as n_records
    from {{ model }}
    where
        {{ dbt_expectations._row_condition_sql(row_condition) }}
        and {{ ignore_sql }}
)

select * from counted
where n_records > 1
{% endtest %}


{% test expect_column_pair_values_A_to_be_greater_than_B(
    model, column_A, column_B, or_equal=False, row_condition=None
) %}
    {%- set expression = column_A ~ (" >= " if or_equal else " > ") ~ column_B -%}
    {{ dbt_expectations._rows_where_not(model, expression, row_condition) }}
{% endtest %}
