"""The request path's layers, async: the source the sync twins in ``_sync`` are generated
from (``python scripts/unasync.py``; ``--check`` fails when they are stale)."""
