-- The receiver's health probe (mailglass_pipeline/ingest/health.py), registered in
-- mailglass_pipeline.queries.

-- name: schema_revision
-- The schema revision the database is at, compared with the code's head by GET /healthz.
SELECT version_num FROM mailglass_alembic_version;
