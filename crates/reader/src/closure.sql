WITH RECURSIVE
named(oid) AS (
    SELECT to_regclass(t.name)::oid FROM unnest($1::text[]) AS t(name)
),
start(classid, objid) AS (
    SELECT 'pg_class'::regclass::oid, named.oid FROM named WHERE named.oid IS NOT NULL
  UNION
    SELECT 'pg_proc'::regclass::oid, p.oid
    FROM unnest($2::text[], $3::text[]) AS f(schema, name)
    JOIN pg_proc p ON p.proname = f.name
    JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE (f.schema IS NULL AND n.nspname = ANY (current_schemas(true))) OR n.nspname = f.schema
  UNION
    SELECT 'pg_operator'::regclass::oid, o.oid FROM pg_operator o
    WHERE o.oprname = ANY ($4::text[]) AND o.oprnamespace <> 'pg_catalog'::regnamespace
),
reached(classid, objid) AS (
    SELECT classid, objid FROM start
  UNION
    SELECT e.classid, e.objid FROM reached r CROSS JOIN LATERAL (
        SELECT d.refclassid, d.refobjid
        FROM pg_class v
        JOIN pg_rewrite rw ON rw.ev_class = v.oid AND rw.ev_type = '1'
        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
        WHERE r.classid = 'pg_class'::regclass AND v.oid = r.objid AND v.relkind = 'v'
          AND NOT (d.refclassid = 'pg_class'::regclass AND d.refobjid = v.oid)
      UNION ALL
        SELECT 'pg_class'::regclass::oid, i.inhrelid FROM pg_inherits i
        WHERE r.classid = 'pg_class'::regclass AND i.inhparent = r.objid
      UNION ALL
        SELECT d.refclassid, d.refobjid
        FROM pg_policy pol
        JOIN pg_depend d ON d.classid = 'pg_policy'::regclass AND d.objid = pol.oid
        WHERE r.classid = 'pg_class'::regclass AND pol.polrelid = r.objid
          AND NOT (d.refclassid = 'pg_class'::regclass AND d.refobjid = r.objid)
      UNION ALL
        SELECT d.refclassid, d.refobjid FROM pg_depend d
        WHERE r.classid = 'pg_proc'::regclass AND d.classid = 'pg_proc'::regclass
          AND d.objid = r.objid
      UNION ALL
        SELECT 'pg_proc'::regclass::oid, o.oprcode::oid FROM pg_operator o
        WHERE r.classid = 'pg_operator'::regclass AND o.oid = r.objid
      UNION ALL
        -- PostgreSQL records no dependency on pinned objects (built-in
        -- functions, operators, system catalogs and views), so pg_depend
        -- misses a view over now(), random() or pg_class. The stored trees
        -- of a view's rule and of a SQL-standard body name every relation,
        -- function and operator they use: read those too.
        SELECT CASE ref[1] WHEN 'relid' THEN 'pg_class'::regclass::oid
                           WHEN 'opno' THEN 'pg_operator'::regclass::oid
                           ELSE 'pg_proc'::regclass::oid END,
               ref[2]::oid
        FROM (
            SELECT rw.ev_action::text FROM pg_class v
            JOIN pg_rewrite rw ON rw.ev_class = v.oid AND rw.ev_type = '1'
            WHERE r.classid = 'pg_class'::regclass AND v.oid = r.objid AND v.relkind = 'v'
          UNION ALL
            SELECT p.prosqlbody::text FROM pg_proc p
            WHERE r.classid = 'pg_proc'::regclass AND p.oid = r.objid
              AND p.prosqlbody IS NOT NULL
          UNION ALL
            -- Argument defaults (`f(at timestamptz DEFAULT now())`) run as
            -- part of the call that leaves them out.
            SELECT p.proargdefaults::text FROM pg_proc p
            WHERE r.classid = 'pg_proc'::regclass AND p.oid = r.objid
              AND p.proargdefaults IS NOT NULL
        ) AS t(tree),
        regexp_matches(t.tree, ':(relid|opno|funcid|aggfnoid|winfnoid|opfuncid) ([0-9]+)', 'g')
            AS ref
        WHERE ref[2] <> '0'
    ) AS e(classid, objid)
    WHERE e.classid IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_operator'::regclass)
)
SELECT 'relation', c.oid, n.nspname::text, c.relname::text, c.relkind::text,
       c.relpersistence = 'p',
       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid),
       /* publication_gap($5) */,
       c.oid IN (SELECT oid FROM named),
       -- CURRENT_TIMESTAMP, CURRENT_USER and the like are nodes of their
       -- own, not function calls.
       c.relkind = 'v' AND EXISTS (
           SELECT 1 FROM pg_rewrite rw
           WHERE rw.ev_class = c.oid AND rw.ev_type = '1'
             AND strpos(rw.ev_action::text, '{SQLVALUEFUNCTION ') > 0)
FROM reached JOIN pg_class c ON reached.classid = 'pg_class'::regclass AND c.oid = reached.objid
JOIN pg_namespace n ON n.oid = c.relnamespace
UNION ALL
SELECT 'function', p.oid, n.nspname::text, p.proname::text, p.provolatile::text,
       p.prosqlbody IS NOT NULL, false, NULL, false,
       COALESCE(strpos(p.prosqlbody::text, '{SQLVALUEFUNCTION ') > 0, false)
           OR COALESCE(strpos(p.proargdefaults::text, '{SQLVALUEFUNCTION ') > 0, false)
FROM reached JOIN pg_proc p ON reached.classid = 'pg_proc'::regclass AND p.oid = reached.objid
JOIN pg_namespace n ON n.oid = p.pronamespace
