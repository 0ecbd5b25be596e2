-- Least privilege in the warehouse database. Run by a superuser, connected to the warehouse; idempotent
-- (the embedded stack runs it at every `streamflow stack up`, the compose init script once).
--
--   role             can
--   streamflow       own every schema it creates (raw, staging, snapshots, marts, ml, ops, feast_*, dbt's own)
--   streamflow_api   read ops, feast_online; write the push tables only (feast_online.*usage_realtime: insert,
--                    update; feast_push.*: insert) and the shadow scores (ml.shadow_scores: insert, update and
--                    the select its upsert needs; nothing else of ml)
--   analyst          read marts and snapshots
--
-- Schemas that do not exist yet get their grants when the pipeline creates them (the event trigger below),
-- and tables created later, including the ones dbt drops and re-creates, through default privileges.
-- Passwords are set by the caller (ALTER ROLE ... PASSWORD), never here.

do $$
begin
  if not exists (select from pg_roles where rolname = 'streamflow_api') then
    create role streamflow_api login nosuperuser nocreatedb nocreaterole noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'analyst') then
    create role analyst login nosuperuser nocreatedb nocreaterole noinherit;
  end if;
  execute format('revoke all on database %I from public', current_database());
  execute format('grant connect on database %I to streamflow_api, analyst', current_database());
end $$;

revoke create on schema public from public;

-- The grants of one schema: run by its owner (the pipeline) or a superuser.
create or replace function public.streamflow_grant_schema(schema_name text) returns void
language plpgsql set search_path = pg_catalog as $$
declare
  owner text := (select nspowner::regrole::text from pg_namespace where nspname = schema_name);
  readers text[] := case schema_name
    when 'marts' then array['analyst']
    when 'snapshots' then array['analyst']
    when 'ops' then array['streamflow_api']
    when 'feast_online' then array['streamflow_api']
    else array[]::text[]
  end;
  reader text;
  push regclass;
begin
  if owner is null then
    return;
  end if;
  foreach reader in array readers loop
    execute format('grant usage on schema %I to %I', schema_name, reader);
    execute format('grant select on all tables in schema %I to %I', schema_name, reader);
    execute format('alter default privileges for role %s in schema %I grant select on tables to %I',
                   owner, schema_name, reader);
  end loop;
  if schema_name = 'feast_push' then  -- the offline record of pushed events: insert only
    execute format('grant usage on schema %I to streamflow_api', schema_name);
    execute format('grant insert on all tables in schema %I to streamflow_api', schema_name);
    execute format('alter default privileges for role %s in schema %I grant insert on tables to streamflow_api',
                   owner, schema_name);
  elsif schema_name = 'ml' then  -- the API upserts shadow scores; nothing else of ml
    execute format('grant usage on schema %I to streamflow_api', schema_name);
    if to_regclass('ml.shadow_scores') is not null then
      -- insert ... on conflict (key) do update set c = excluded.c: PostgreSQL asks for select on the key columns
      -- and on every column read through excluded, here all of them
      execute 'grant select, insert, update on ml.shadow_scores to streamflow_api';
    end if;
  elsif schema_name = 'feast_online' then  -- the online table of the push view: Feast upserts into it
    for push in
      select c.oid::regclass from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = schema_name and c.relkind = 'r' and c.relname like '%usage\_realtime'
    loop
      execute format('grant insert, update on %s to streamflow_api', push);
    end loop;
  end if;
end $$;

-- Grants for schemas (and online push tables) created after this script ran.
create or replace function public.streamflow_grant_created() returns event_trigger
language plpgsql set search_path = pg_catalog as $$
declare
  created record;
begin
  for created in select * from pg_event_trigger_ddl_commands() loop
    if created.command_tag = 'CREATE SCHEMA' then
      perform public.streamflow_grant_schema((select nspname from pg_namespace where oid = created.objid));
    elsif created.command_tag = 'CREATE TABLE' and created.schema_name in ('feast_online', 'ml') then
      perform public.streamflow_grant_schema(created.schema_name);
    end if;
  end loop;
end $$;

do $$
begin
  if not exists (select from pg_event_trigger where evtname = 'streamflow_grants') then
    create event trigger streamflow_grants on ddl_command_end when tag in ('CREATE SCHEMA', 'CREATE TABLE')
      execute function public.streamflow_grant_created();
  end if;
end $$;

-- Schemas that exist already (a warehouse created before these roles).
select public.streamflow_grant_schema(nspname::text) from pg_namespace
where nspname in ('marts', 'snapshots', 'ops', 'feast_online', 'feast_push', 'ml');
