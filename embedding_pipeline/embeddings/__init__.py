"""Filling the per-model tables: preparation, the re-embed engine, change capture, coverage.

``setup`` (register spaces, create tables and bindings), ``reembed`` (stream a source into one
space, resumably; records each HNSW build in ``index_builds``), ``capture`` (trigger or cursor change capture and its consumer), ``coverage``
(how complete and pure one space is on one source), ``cost`` (tokens, price and time
before a run), ``app_sync`` (an app's rollback column kept current), ``queries`` (all of their SQL).
A new source kind starts in ``spaces.source`` and ``setup``; a new write strategy goes here, its
statements in ``queries``.

May import: ``config``, ``errors``, ``db``, ``spaces``, ``providers``, ``read_path``.
"""
