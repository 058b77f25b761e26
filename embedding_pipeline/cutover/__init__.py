"""Cutover, rollback, delayed deletion and status: the only code that changes what is served.

``switch`` (gates, the flip in one transaction, rollback), ``deletion`` (retention rules), ``status``
(per source and space), ``retention`` (shared time rules), ``app_stage``/``app_flip``/``app_env`` (an
application's own columns), ``queries`` (the package's SQL).

May import every core package below it: ``config``, ``errors``, ``db``, ``spaces``, ``providers``,
``read_path``, ``embeddings``, ``evaluation``, ``backup``.
"""
