"""A partitioned check's story per partition, read from Dagster's storage: what a failing e2e assertion prints."""

import sqlalchemy as sa


def check_history(storage_url: str) -> list[tuple]:
    """Every materialization and no_stale_orphans execution per partition, in storage order (a failure's story)."""
    engine = sa.create_engine(storage_url, poolclass=sa.pool.NullPool)
    query = """
        SELECT e.partition, e.id, 'materialized', r.pipeline_name, NULL
        FROM event_logs AS e JOIN runs AS r ON r.run_id = e.run_id
        WHERE e.dagster_event_type = 'ASSET_MATERIALIZATION' AND e.asset_key LIKE '%webhook_reconciliation%'
        UNION ALL
        SELECT c.partition, c.id, c.execution_status, r.pipeline_name, c.materialization_event_storage_id
        FROM asset_check_executions AS c JOIN runs AS r ON r.run_id = c.run_id
        WHERE c.check_name = 'no_stale_orphans'
        ORDER BY 1, 2
    """
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


def shown_by_dagster(rows: list[tuple]) -> dict[str, str]:
    """Per partition, from ``check_history``: the status Dagster shows, or why it shows none."""
    shown: dict[str, str] = {}
    for partition in sorted({row[0] for row in rows}):
        mine = [row for row in rows if row[0] == partition]
        latest_materialization = max(row[1] for row in mine if row[2] == "materialized")
        checks = sorted((row for row in mine if row[2] != "materialized"), key=lambda row: row[1])
        latest = checks[-1]
        if latest[4] == latest_materialization:
            shown[partition] = latest[2]
        elif latest[3] != "reconcile_due_tenants" and any(row[4] == latest_materialization for row in checks):
            shown[partition] = "MISSING: runs executed out of creation order"
        else:
            shown[partition] = f"MISSING: latest execution {latest} is not of the latest materialization"
    return shown
