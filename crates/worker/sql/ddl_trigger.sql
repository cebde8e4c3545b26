-- cachemachine: DDL reaches the invalidator through the WAL.
--
-- Two event triggers (ddl_command_end and sql_drop) call
-- cachemachine.emit_ddl_message(), which writes one TRANSACTIONAL logical
-- message (prefix 'cm.ddl') naming what the command touched. The message is
-- decoded only if the transaction commits, at its place in commit order, so
-- the invalidator applies it exactly like a row change. The JSON shape and
-- what the worker does with each kind are described in docs/ddl.md.
--
-- Every statement is idempotent: `setup` runs this file whenever the trigger
-- is missing or out of date. Creating an event trigger needs superuser
-- (PostgreSQL 15); the functions run as whoever runs the DDL and only read
-- catalogs and call pg_logical_emit_message, which PUBLIC may execute.

CREATE SCHEMA IF NOT EXISTS cachemachine;

-- The relations of one inheritance tree, from `rel` upwards (ancestors) or
-- downwards (descendants), through pg_inherits, as [{schema, name}, ...].
CREATE OR REPLACE FUNCTION cachemachine.ddl_inheritance(rel oid, upwards boolean)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE tree(oid) AS (
        SELECT CASE WHEN upwards THEN i.inhparent ELSE i.inhrelid END
        FROM pg_inherits i
        WHERE (upwards AND i.inhrelid = rel) OR (NOT upwards AND i.inhparent = rel)
        UNION
        SELECT CASE WHEN upwards THEN i.inhparent ELSE i.inhrelid END
        FROM pg_inherits i JOIN tree t
          ON (upwards AND i.inhrelid = t.oid) OR (NOT upwards AND i.inhparent = t.oid)
    )
    SELECT COALESCE(jsonb_agg(jsonb_build_object('schema', n.nspname, 'name', c.relname)
                              ORDER BY n.nspname, c.relname), '[]'::jsonb)
    FROM tree t
    JOIN pg_class c ON c.oid = t.oid
    JOIN pg_namespace n ON n.oid = c.relnamespace
$$;

-- One relation a command touched. `rel` is its oid when known; a relation
-- that still exists is described from pg_class (its name now, its relkind,
-- its ancestors and descendants now, and whether a relation of the same name
-- exists in another schema); a dropped one by the names the event gave.
-- Temporary relations are session-local and never cached: NULL.
CREATE OR REPLACE FUNCTION cachemachine.ddl_relation(rel oid, schema_name text, rel_name text)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH found AS (
        SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relnamespace, n.nspname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE (rel IS NOT NULL AND c.oid = rel)
           OR (rel IS NULL AND n.nspname = schema_name AND c.relname = rel_name)
    )
    SELECT CASE
        WHEN f.oid IS NULL THEN jsonb_build_object(
            'kind', 'relation', 'oid', rel::bigint, 'schema', schema_name, 'name', rel_name,
            'exists', false)
        WHEN f.relpersistence = 't' THEN NULL
        ELSE jsonb_build_object(
            'kind', 'relation', 'oid', f.oid::bigint, 'schema', f.nspname, 'name', f.relname,
            'exists', true, 'relkind', f.relkind::text,
            'ancestors', cachemachine.ddl_inheritance(f.oid, true),
            'descendants', cachemachine.ddl_inheritance(f.oid, false),
            'same_name_elsewhere', EXISTS (
                SELECT 1 FROM pg_class o JOIN pg_namespace on_ ON on_.oid = o.relnamespace
                WHERE o.relname = f.relname AND o.relnamespace <> f.relnamespace
                  AND o.relkind IN ('r', 'p', 'v', 'm', 'f')
                  AND on_.nspname NOT LIKE 'pg\_temp\_%' AND on_.nspname NOT LIKE 'pg\_toast%'))
        END
    FROM (SELECT 1) one LEFT JOIN found f ON true
    LIMIT 1
$$;

-- One function (or procedure, aggregate) a command touched: its name now,
-- and whether a function of the same name exists in another schema
-- (pg_catalog included: a user function can out-match a built-in).
CREATE OR REPLACE FUNCTION cachemachine.ddl_function(func oid, schema_name text, func_name text)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p.oid IS NULL THEN jsonb_build_object(
            'kind', 'function', 'oid', func::bigint, 'schema', schema_name, 'name', func_name,
            'exists', false)
        ELSE jsonb_build_object(
            'kind', 'function', 'oid', p.oid::bigint, 'schema', n.nspname, 'name', p.proname,
            'exists', true,
            'same_name_elsewhere', EXISTS (
                SELECT 1 FROM pg_proc o
                WHERE o.proname = p.proname AND o.pronamespace <> p.pronamespace))
        END
    FROM (SELECT 1) one
    LEFT JOIN pg_proc p ON p.oid = func
    LEFT JOIN pg_namespace n ON n.oid = p.pronamespace
$$;

-- What one touched object means for cached results, or NULL when nothing:
-- a relation or function to invalidate by name, or an object the worker
-- cannot scope (the whole cache is flushed). `names` are the object's
-- address names (pg_identify_object_as_address).
CREATE OR REPLACE FUNCTION cachemachine.ddl_object(
    tag text, object_type text, class oid, obj oid, names text[], identity text)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        -- Privileges and comments change no result a query returns.
        WHEN tag IN ('GRANT', 'REVOKE', 'COMMENT', 'SECURITY LABEL', 'ALTER DEFAULT PRIVILEGES')
            THEN NULL
        WHEN object_type IN ('table', 'view', 'materialized view', 'foreign table')
            THEN cachemachine.ddl_relation(obj, names[1], names[2])
        -- Parts of a relation: invalidate the relation they belong to.
        WHEN object_type IN ('table column', 'table constraint', 'policy', 'rule')
            THEN cachemachine.ddl_relation(
                CASE WHEN class = 'pg_class'::regclass THEN obj END, names[1], names[2])
        WHEN object_type IN ('function', 'procedure', 'aggregate')
            THEN cachemachine.ddl_function(obj, names[1], names[2])
        -- No cached result depends on these (docs/ddl.md says why).
        WHEN object_type IN ('index', 'index column', 'sequence', 'sequence column',
                             'toast table', 'toast table column', 'statistics object',
                             'trigger', 'default value', 'default acl')
            THEN NULL
        -- Creating or dropping a schema or type changes no existing result
        -- (what a DROP ... CASCADE removes is reported object by object).
        WHEN object_type IN ('schema', 'type', 'domain', 'domain constraint')
             AND tag NOT IN ('ALTER SCHEMA', 'ALTER TYPE', 'ALTER DOMAIN')
            THEN NULL
        -- Schema renames, type and enum changes, extensions, publications,
        -- operators, casts, servers and anything not listed above.
        ELSE jsonb_build_object('kind', 'unscoped', 'type', object_type, 'identity', identity)
        END
$$;

-- The event trigger function: one message per command that touched anything
-- relevant; nothing for the rest (CREATE INDEX, GRANT, ...). It never makes
-- the user's DDL fail over a description problem: if describing fails, the
-- message says so and the worker flushes the whole cache.
CREATE OR REPLACE FUNCTION cachemachine.emit_ddl_message()
RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    objects jsonb;
BEGIN
    BEGIN
        IF TG_EVENT = 'sql_drop' THEN
            SELECT COALESCE(jsonb_agg(o), '[]'::jsonb) INTO objects
            FROM pg_event_trigger_dropped_objects() d,
                 LATERAL cachemachine.ddl_object(TG_TAG, d.object_type, d.classid, d.objid,
                                                 d.address_names, d.object_identity) o
            WHERE NOT d.is_temporary AND o IS NOT NULL;
        ELSE
            SELECT COALESCE(jsonb_agg(o), '[]'::jsonb) INTO objects
            FROM pg_event_trigger_ddl_commands() c
            LEFT JOIN LATERAL pg_identify_object_as_address(c.classid, c.objid, c.objsubid) a
                ON c.classid IS NOT NULL,
                 LATERAL cachemachine.ddl_object(c.command_tag, c.object_type, c.classid,
                                                 c.objid, a.object_names, c.object_identity) o
            WHERE o IS NOT NULL;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        objects := jsonb_build_array(jsonb_build_object(
            'kind', 'unscoped', 'type', 'error', 'identity', SQLERRM));
    END;
    IF jsonb_array_length(objects) > 0 THEN
        PERFORM pg_logical_emit_message(true, 'cm.ddl', jsonb_build_object(
            'v', 1, 'event', TG_EVENT, 'tag', TG_TAG, 'objects', objects)::text);
    END IF;
END
$$;

-- ENABLE ALWAYS: a trigger created enabled ('O') does not fire in a session
-- with session_replication_role = replica, which bulk loads, restores and
-- migrations set to skip triggers; their DDL must invalidate too.
DROP EVENT TRIGGER IF EXISTS cachemachine_ddl_command_end;
CREATE EVENT TRIGGER cachemachine_ddl_command_end ON ddl_command_end
    EXECUTE FUNCTION cachemachine.emit_ddl_message();
ALTER EVENT TRIGGER cachemachine_ddl_command_end ENABLE ALWAYS;
DROP EVENT TRIGGER IF EXISTS cachemachine_sql_drop;
CREATE EVENT TRIGGER cachemachine_sql_drop ON sql_drop
    EXECUTE FUNCTION cachemachine.emit_ddl_message();
ALTER EVENT TRIGGER cachemachine_sql_drop ENABLE ALWAYS;

-- What `setup` and `check` compare to tell an out-of-date installation.
COMMENT ON FUNCTION cachemachine.emit_ddl_message() IS 'cachemachine DDL trigger v2';
