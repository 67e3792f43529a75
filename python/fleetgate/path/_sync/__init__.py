"""The request path's layers, sync: generated from ``_async`` by ``scripts/unasync.py``;
edit those, then run the script."""
