-- `mailglass doctor` (mailglass_pipeline/doctor.py): what a live database holds of what the product
-- relies on. Registered in mailglass_pipeline.queries. Every statement runs in the Mailglass schema
-- (the session's search_path, MAILGLASS_DB_SCHEMA), which schema_name binds where a catalog is read.
-- Reads only, but for the two repair statements at the end.

-- name: doctor_mailglass_schemas
-- Every schema holding a table named mailglass_events: where Mailglass (or this project) is installed.
SELECT n.nspname AS schema_name
FROM pg_class AS c
INNER JOIN pg_namespace AS n ON c.relnamespace = n.oid
WHERE c.relname = 'mailglass_events' AND c.relkind IN ('r', 'p')
ORDER BY n.nspname;

-- name: doctor_schema_state
-- Mailglass's stamp (its migrator reads COMMENT ON TABLE mailglass_events), whether the project's
-- version table is there, who owns the queue (the role the migrations ran as: the owner the
-- project's functions must have), and the schema name as PostgreSQL writes it in a search_path.
SELECT
    obj_description(c.oid, 'pg_class') AS stamp,
    to_regclass(format('%I.mailglass_alembic_version', n.nspname)) IS NOT NULL AS versioned,
    (
        SELECT pg_get_userbyid(qc.relowner)
        FROM pg_class AS qc
        WHERE qc.relnamespace = n.oid AND qc.relname = 'mailglass_reconciliation_queue'
    ) AS migration_owner,
    quote_ident(n.nspname) AS quoted
FROM pg_class AS c
INNER JOIN pg_namespace AS n ON c.relnamespace = n.oid
WHERE n.nspname = :schema_name AND c.relname = 'mailglass_events';

-- name: doctor_revision
-- The project's Alembic revision (its version table, in the Mailglass schema).
SELECT version_num FROM mailglass_alembic_version;

-- name: doctor_functions
-- The project's functions as the catalog holds them: owner, SECURITY DEFINER, pinned search_path.
SELECT
    p.proname AS function_name,
    pg_get_userbyid(p.proowner) AS owner,
    p.prosecdef AS security_definer,
    (SELECT s.setting FROM unnest(p.proconfig) AS s (setting) WHERE s.setting LIKE 'search\_path=%') AS search_path
FROM pg_proc AS p
INNER JOIN pg_namespace AS n ON p.pronamespace = n.oid
WHERE n.nspname = :schema_name AND p.proname = ANY(CAST(:names AS text[]));

-- name: doctor_triggers
-- Every user trigger on the schema's tables: its table, state (O fires, D disabled, R replica
-- sessions only, A always) and function.
SELECT c.relname AS table_name, t.tgname AS trigger_name, t.tgenabled AS enabled, p.proname AS function_name
FROM pg_trigger AS t
INNER JOIN pg_class AS c ON t.tgrelid = c.oid
INNER JOIN pg_namespace AS n ON c.relnamespace = n.oid
INNER JOIN pg_proc AS p ON t.tgfoid = p.oid
WHERE n.nspname = :schema_name AND NOT t.tgisinternal;

-- name: doctor_role
-- The role whose grants are checked (role, or the connected one when role is null): superuser, or a
-- member of the queue's owner (it holds the owner's rights).
SELECT
    r.rolname AS role_name,
    r.rolsuper AS superuser,
    EXISTS(
        SELECT 1
        FROM pg_class AS c
        INNER JOIN pg_namespace AS n ON c.relnamespace = n.oid
        WHERE
            n.nspname = :schema_name AND c.relname = 'mailglass_reconciliation_queue'
            AND pg_has_role(r.oid, c.relowner, 'USAGE')
    ) AS owner
FROM pg_roles AS r
WHERE r.rolname = coalesce(CAST(:role AS text), current_user);

-- name: doctor_missing_privileges
-- The expected privileges (kind, object, privilege: parallel arrays from the grants file) the role
-- does not hold, directly or through a role it belongs to. A column is written "table#column".
SELECT g.kind, g.object_name, g.privilege
FROM
    unnest(
        CAST(:kinds AS text[]), CAST(:objects AS text[]), CAST(:privileges AS text[])
    ) AS g (kind, object_name, privilege)
WHERE NOT CASE g.kind
    WHEN 'table' THEN has_table_privilege(:role, g.object_name, g.privilege)
    WHEN 'column' THEN has_column_privilege(
        :role, split_part(g.object_name, '#', 1), split_part(g.object_name, '#', 2), g.privilege
    )
    WHEN 'schema' THEN has_schema_privilege(:role, g.object_name, g.privilege)
    ELSE has_function_privilege(:role, g.object_name, g.privilege)
END;

-- name: doctor_table_acl
-- The table privileges granted to the role itself on the tables its grants file revokes first.
SELECT c.relname AS table_name, a.privilege_type
FROM pg_class AS c
INNER JOIN pg_namespace AS n ON c.relnamespace = n.oid
CROSS JOIN LATERAL aclexplode(c.relacl) AS a
WHERE
    n.nspname = :schema_name AND c.relname = ANY(CAST(:tables AS text[]))
    AND a.grantee = (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = :role);

-- name: doctor_writer_clocks
-- Pending orphans whose stored inserted_at betrays a writer session in another time zone: ahead
-- of now (a zone east of UTC writing local time through the column default), or far from the
-- instant in the orphan's own UUIDv7 id (Mailglass's ids: the client's UTC clock at the write).
-- The queue holds each orphan's id and stored instant (the trigger reads the timestamp as UTC).
-- Zones span UTC-12 to UTC+14: an id further off than 15 hours (54000 s) says nothing of a zone.
-- kind, how many, one example, and the median offset in seconds.
WITH stored AS (
    SELECT
        q.event_id,
        q.tenant_id,
        extract(EPOCH FROM q.orphan_inserted_at - now()) AS ahead_seconds,
        CASE WHEN substr(CAST(q.event_id AS text), 15, 1) = '7' THEN
            extract(EPOCH FROM q.orphan_inserted_at) - CAST(
                CAST(CAST('x' || lpad(substr(replace(CAST(q.event_id AS text), '-', ''), 1, 12), 16, '0') AS bit(64))
                    AS bigint) AS numeric
            ) / 1000
        END AS off_id_seconds
    FROM mailglass_reconciliation_queue AS q
    WHERE q.parked_at IS NULL
)

SELECT
    'ahead' AS kind, count(*) AS orphans, min(CAST(event_id AS text)) AS example_id,
    min(tenant_id) AS example_tenant,
    percentile_disc(0.5) WITHIN GROUP (ORDER BY ahead_seconds) AS offset_seconds
FROM stored
WHERE ahead_seconds > :tolerance_seconds
UNION ALL
SELECT
    'off_id' AS kind, count(*) AS orphans, min(CAST(event_id AS text)) AS example_id,
    min(tenant_id) AS example_tenant,
    percentile_disc(0.5) WITHIN GROUP (ORDER BY off_id_seconds) AS offset_seconds
FROM stored
WHERE abs(off_id_seconds) BETWEEN :tolerance_seconds AND 54000 AND ahead_seconds <= :tolerance_seconds;

-- name: doctor_unqueued_orphans
-- Pending orphans without their queue row (mailglass_reconciliation_unqueued): how many, and one of them.
SELECT count(*) AS orphans, min(CAST(u.id AS text)) AS example_id
FROM mailglass_reconciliation_unqueued(:retention_days) AS u (id);

-- name: doctor_queue_leftovers
-- Queue rows whose orphan is gone from the ledger or already reconciled: the triggers remove them
-- as the ledger changes, so these too come from writes no trigger saw.
SELECT count(*) AS queue_rows, min(CAST(q.event_id AS text)) AS example_id
FROM mailglass_reconciliation_queue AS q
WHERE
    NOT EXISTS (SELECT 1 FROM mailglass_events AS e WHERE e.id = q.event_id)
    OR EXISTS (
        SELECT 1 FROM mailglass_events AS r WHERE r.idempotency_key = 'reconciled:' || CAST(q.event_id AS text)
    );

-- name: doctor_queue_missing_rows
-- --repair: queue the orphans doctor_unqueued_orphans finds, each row as the ledger trigger
-- (mailglass_track_orphans, migration 0004) builds it: its instant (the stored timestamp read as
-- UTC), its match key (provider; message id from provider_message_id, message_id, sg_message_id,
-- first in metadata then in normalized_payload, a non-empty JSON string only) and linkable_at when
-- its delivery is already there (the lookup, mailglass_reconciliation_delivery); never examined, so due at once.
-- ON CONFLICT: a row a trigger adds meanwhile wins; running it twice queues nothing twice.
INSERT INTO mailglass_reconciliation_queue (
    event_id, tenant_id, orphan_inserted_at, provider, provider_message_id, linkable_at
)
SELECT
    e.id,
    e.tenant_id,
    CAST(e.inserted_at AS timestamp) AT TIME ZONE 'UTC',
    x.provider,
    x.message_id,
    CASE
        WHEN
            x.provider IS NOT NULL AND x.message_id IS NOT NULL
            AND EXISTS (
                SELECT 1 FROM mailglass_reconciliation_delivery(e.tenant_id, x.provider, x.message_id)
            )
            THEN now()
    END
FROM mailglass_reconciliation_unqueued(:retention_days) AS u (id)
INNER JOIN mailglass_events AS e ON u.id = e.id
CROSS JOIN LATERAL (
    SELECT
        mailglass_reconciliation_event_provider(e.metadata, e.normalized_payload) AS provider,
        mailglass_reconciliation_event_message_id(e.metadata, e.normalized_payload) AS message_id
) AS x
ON CONFLICT (event_id) DO NOTHING;

-- name: doctor_drop_leftovers
-- --repair: delete the rows doctor_queue_leftovers finds (none a sweep holds: SKIP LOCKED).
DELETE FROM mailglass_reconciliation_queue AS q
WHERE q.event_id IN (
    SELECT c.event_id
    FROM mailglass_reconciliation_queue AS c
    WHERE
        NOT EXISTS (SELECT 1 FROM mailglass_events AS e WHERE e.id = c.event_id)
        OR EXISTS (
            SELECT 1 FROM mailglass_events AS r WHERE r.idempotency_key = 'reconciled:' || CAST(c.event_id AS text)
        )
    FOR UPDATE SKIP LOCKED
);

-- name: doctor_default_search_path
-- The search_path a session of this role on this database starts with when it sets none (a
-- Mailglass app's): ALTER ROLE ... IN DATABASE, ALTER ROLE, ALTER DATABASE, else the built-in
-- default. (A search_path set in postgresql.conf is not visible here.)
SELECT coalesce(
    (
        SELECT substr(c.setting, 13)
        FROM pg_db_role_setting AS s
        CROSS JOIN LATERAL unnest(s.setconfig) AS c (setting)
        WHERE
            c.setting LIKE 'search\_path=%'
            AND s.setrole IN (0, (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = current_user))
            AND s.setdatabase IN (0, (SELECT d.oid FROM pg_database AS d WHERE d.datname = current_database()))
        ORDER BY s.setrole <> 0 DESC, s.setdatabase <> 0 DESC
        LIMIT 1
    ),
    (SELECT boot_val FROM pg_settings WHERE name = 'search_path')
) AS search_path;

-- name: doctor_set_path
-- Take path as this transaction's search_path (doctor_schemas_on_path then reads what it resolves to).
SELECT set_config('search_path', :path, TRUE) AS path;

-- name: doctor_schemas_on_path
-- The existing schemas of the search_path, in order ($user resolved): where an unqualified name is found.
SELECT current_schemas(FALSE) AS schemas;

-- name: doctor_citext
-- Where the citext extension lives, and the type of mailglass_suppressions.address.
SELECT
    (
        SELECT n.nspname
        FROM pg_extension AS x INNER JOIN pg_namespace AS n ON x.extnamespace = n.oid
        WHERE x.extname = 'citext'
    ) AS extension_schema,
    (
        SELECT tn.nspname
        FROM pg_attribute AS a
        INNER JOIN pg_type AS t ON a.atttypid = t.oid
        INNER JOIN pg_namespace AS tn ON t.typnamespace = tn.oid
        WHERE
            a.attrelid = to_regclass(format('%I.mailglass_suppressions', CAST(:schema_name AS text)))
            AND a.attname = 'address' AND t.typname = 'citext' AND t.typtype = 'b'
    ) AS address_type_schema;
