"""Sensor ``tenant_partitions``: one dynamic partition per tenant found in the database.

Tenants are whoever has a delivery or a pending orphan (``known_tenants``,
a loose index scan, cheap every 30 s). Only missing keys are added, so a tick
with nothing new is a skip. A tenant id that cannot be a partition key (see
``partitions.TENANT_KEY_PATTERN``) is logged and left out; the others are still
added, because one odd id must not hide every tenant created after it.

Partitions are never deleted here: deleting a dynamic partition drops its
materialization history from the UI, and tenants come back.

Every tick ends with a skip reason that says what happened ("added 3 tenant
partition(s): ..." or "all 3 tenant(s) already have a partition"): this sensor
never requests runs, and without a reason Dagster would record the tick that
added partitions as "Sensor function returned an empty result". The reason is
what the sensor page's tick history shows for each tick.

Default status RUNNING: it only adds partitions, and without it a fresh
``mailglass dev`` shows the asset with no partitions to launch.
"""

from dagster import (
    AddDynamicPartitionsRequest,
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mailglass_pipeline import db
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.tenant_reconciliation.partitions import (
    TENANTS_PARTITIONS_NAME,
    is_valid_tenant_key,
)
from mailglass_pipeline.reconciliation.monitoring import known_tenants

SENSOR_INTERVAL_SECONDS = 30


@sensor(
    name="tenant_partitions",
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="Adds a `tenants` partition for each tenant in the database; unfit tenant ids are logged and skipped.",
)
def tenant_partitions(context: SensorEvaluationContext, mailglass_db: MailglassDatabase) -> SensorResult | SkipReason:
    with db.connect(mailglass_db.get_engine()) as conn:
        tenants = known_tenants(conn)
    unfit = [t for t in tenants if not is_valid_tenant_key(t)]
    if unfit:
        context.log.warning(
            f"{len(unfit)} tenant id(s) cannot be partition keys and are skipped "
            f"(allowed: letters, digits, _ . @ -, 1-64 chars): {unfit[:20]!r}"
        )
    existing = set(context.instance.get_dynamic_partitions(TENANTS_PARTITIONS_NAME))
    new = [t for t in tenants if t not in existing and is_valid_tenant_key(t)]
    if not new:
        skipped = f"; {len(unfit)} unfit id(s) skipped: {unfit[:5]!r}" if unfit else ""
        return SkipReason(f"all {len(tenants) - len(unfit)} tenant(s) already have a partition{skipped}")
    context.log.info(f"adding {len(new)} tenant partition(s): {new[:20]!r}")
    more = f" and {len(new) - 20} more" if len(new) > 20 else ""
    skipped = f"; {len(unfit)} unfit id(s) skipped: {unfit[:5]!r}" if unfit else ""
    return SensorResult(
        dynamic_partitions_requests=[
            AddDynamicPartitionsRequest(partitions_def_name=TENANTS_PARTITIONS_NAME, partition_keys=new)
        ],
        skip_reason=SkipReason(f"added {len(new)} tenant partition(s): {new[:20]!r}{more}{skipped}"),
    )
