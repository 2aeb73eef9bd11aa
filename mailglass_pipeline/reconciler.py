"""The reconciler's public names, kept where callers import them.

The code lives in :mod:`mailglass_pipeline.reconcile`.
"""

from mailglass_pipeline.reconcile import *  # noqa: F403
from mailglass_pipeline.reconcile import __all__ as __all__
