"""Backup before any change: pg_dump verified by restore, Redis RDB verified by a scratch server.

``run`` (take and verify), ``catalog`` (what exists, retention, freshness), ``postgres`` and
``redis`` (the two stores), ``targets`` (which tables a source's backup covers), ``queries`` (the
package's SQL).

May import: ``config``, ``errors``, ``db``, ``spaces``.
"""
