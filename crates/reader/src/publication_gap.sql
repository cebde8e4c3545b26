-- Why the publication named by $PUB does not carry every change of the
-- relation `c` (in namespace `n`) in full, as a phrase; NULL when it does,
-- when no publication is given ($PUB is NULL), and for a partitioned table,
-- which holds no rows: its partitions answer for it (docs/correctness.md).
-- A row filter drops the changes of rows outside it, a column list the
-- values keys are derived from, `publish` whole kinds of change.
NULLIF(CASE
    WHEN $PUB::text IS NULL OR c.relkind = 'p' THEN NULL
    ELSE COALESCE((
        SELECT CASE
                   WHEN NOT (p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate)
                       THEN 'its publication leaves out some of insert, update, delete, truncate'
                   WHEN pt.rowfilter IS NOT NULL THEN 'published with a row filter'
                   WHEN EXISTS (SELECT 1 FROM pg_publication_rel pr
                                WHERE pr.prpubid = p.oid AND pr.prrelid = c.oid
                                  AND pr.prattrs IS NOT NULL)
                       THEN 'published with a column list'
                   ELSE ''
               END
        FROM pg_publication_tables pt JOIN pg_publication p ON p.pubname = pt.pubname
        WHERE pt.pubname = $PUB AND pt.schemaname = n.nspname AND pt.tablename = c.relname
        LIMIT 1), 'not in the publication')
END, '')
