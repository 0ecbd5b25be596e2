-- The API reads a registry database (the Feast SQL registry; on the embedded stack also MLflow's tracking and
-- model registry): streamflow_api may connect and read its tables, now and later, and write nothing. Run by a
-- superuser connected to that database, after warehouse-grants.sql created the role; idempotent.
do $$
declare
  owner text := (select datdba::regrole::text from pg_database where datname = current_database());
begin
  execute format('revoke all on database %I from public', current_database());
  execute format('grant connect on database %I to streamflow_api', current_database());
  execute 'revoke create on schema public from public';
  execute 'grant usage on schema public to streamflow_api';
  execute 'grant select on all tables in schema public to streamflow_api';
  execute format('alter default privileges for role %s in schema public grant select on tables to streamflow_api',
                 owner);
end $$;
