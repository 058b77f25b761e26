"""The database underneath everything: connections, the embedded server, the project's own tables.

``connection`` (Database, URL handling, pgvector registration), ``embedded`` (the pip-installed
PostgreSQL + pgvector), ``schema`` (registry, bindings, audit, alerts, index builds DDL), ``queue`` (change-capture
queue and state tables), ``audit`` (the one audit-row writer), ``queries`` (the package's
statements; the table DDL stays in ``schema`` and ``queue``).

May import: ``config``, ``errors``. Nothing else of ours.
"""
