"""Benchmarks for mailglass-pipeline (not shipped in the wheel).

``python -m benchmarks.sweep`` measures the reconciler against a faithful
reference port of the original per-orphan algorithm (:mod:`benchmarks.reference`)
and a one-statement-per-batch lower bound (:mod:`benchmarks.lower_bound`), on
scratch databases it creates and drops itself. See the Performance section of README.md.
"""
