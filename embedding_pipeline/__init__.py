"""Change the embedding model of a Postgres + pgvector deployment safely.

The core library (config, db, spaces, providers, re-embed, eval, drift, backup,
cutover) knows nothing of Dagster; ``embedding_pipeline.defs`` and
``embedding_pipeline.cli`` are thin layers over it.
"""

__version__ = "0.1.0"
