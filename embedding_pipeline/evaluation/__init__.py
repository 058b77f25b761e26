"""Shadow evaluation: IR metrics, ranking agreement, BEIR loading, stored eval sets, smoke evidence.

Each space is searched with its own query vectors in its own table, never mixed. ``smoke`` and
``sentinels`` are the per-endpoint evidence (dimensions, PL/EN texts, latency, endpoint class).
``queries`` holds every SQL statement of the package.

May import: ``config``, ``errors``, ``db``, ``spaces``, ``providers``, ``read_path``, ``embeddings``.
"""
