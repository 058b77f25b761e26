"""Change the embedding model of a Postgres + pgvector deployment safely.

The core library knows nothing of Dagster; it is grouped by domain in the order data flows:
``config`` -> ``db`` -> ``spaces`` -> ``providers`` -> ``read_path`` -> ``embeddings`` ->
``evaluation`` / ``drift`` / ``backup`` -> ``plan`` / ``cutover`` -> ``local``. A package imports
only packages before it. ``defs`` (Dagster, one folder per domain) and ``cli`` (one module per
domain) are thin layers over the same core.
"""

__version__ = "0.1.0"
