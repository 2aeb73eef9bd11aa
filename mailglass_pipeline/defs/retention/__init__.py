"""Retention: the daily job that keeps Dagster storage and the work queue's parked rows bounded."""
