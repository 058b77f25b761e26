"""Drift: the nightly proof that each index is 100% one model version, its history and alerts.

``stats`` (version distribution, coverage, stale, orphans per space), ``alerts`` (webhook delivery
and the alert table), ``plot`` (trend PNG), ``queries`` (all of their SQL). A new drift check goes
in ``stats``, its statements in ``queries`` (and its Dagster asset check in ``defs/drift``).

May import: ``config``, ``errors``, ``db``, ``spaces``, ``embeddings``.
"""
