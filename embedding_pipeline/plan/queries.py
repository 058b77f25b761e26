"""Every SQL statement of the plan package, composed with ``psycopg.sql``. All of them read.

Grouped by purpose: the project's tables (the registered space, the latest eval report and drift
row, the recorded HNSW builds), the catalog (the index, view, search function and triggers the
plan reports), and the statements the plan prints for the operator (the index build, dropping
the legacy column).

The per-model table and HNSW DDL the plan prints are the space's own (``spaces.model``:
``SpaceTable.ddl``, ``SpaceTable.index_ddl``); the ``SET LOCAL`` before a build and the legacy
column's drop are ``spaces.queries``'.

Identifiers are always ``sql.Identifier``; values are query parameters passed by the caller.
"""

from __future__ import annotations

from psycopg import sql

from embedding_pipeline.spaces.queries import (  # noqa: F401 (drop_column re-exported)
    drop_column,
    set_maintenance_work_mem,
    set_parallel_maintenance_workers,
)

# ---------------------------------------------------------------- the project's tables


def select_registered(schema: str) -> sql.Composed:
    """Params: space."""
    return sql.SQL("SELECT name, identity, model_version, registered_at FROM {}.spaces WHERE name = %s").format(
        sql.Identifier(schema))


def select_latest_eval(schema: str) -> sql.Composed:
    """Params: source, candidate space."""
    return sql.SQL(
        "SELECT id, at, eval_set, kind, active_space, metrics, gate_passed, tolerance, report_path "
        "FROM {}.eval_reports WHERE source = %s AND candidate_space = %s ORDER BY at DESC, id DESC LIMIT 1"
    ).format(sql.Identifier(schema))


def select_latest_drift(schema: str) -> sql.Composed:
    """Params: source, space."""
    return sql.SQL(
        "SELECT * FROM {}.drift_history WHERE source = %s AND space = %s ORDER BY at DESC, id DESC LIMIT 1"
    ).format(sql.Identifier(schema))


def select_index_builds(schema: str) -> sql.Composed:
    """Params: limit; newest first."""
    return sql.SQL("SELECT source, space, rows, dims, seconds, at FROM {}.index_builds "
                   "ORDER BY at DESC, id DESC LIMIT %s").format(sql.Identifier(schema))


# ---------------------------------------------------------------- the catalog


def select_index_def() -> sql.SQL:
    """Params: schema, table, index name."""
    return sql.SQL("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s AND indexname = %s")


def select_view_def() -> sql.SQL:
    """Params: the view's qualified name as text; NULL when it does not exist."""
    return sql.SQL("SELECT pg_get_viewdef(to_regclass(%s), true) AS def")


def select_function_signature() -> sql.SQL:
    """Params: schema, function name."""
    return sql.SQL("SELECT p.oid::regprocedure::text AS sig FROM pg_proc p JOIN pg_namespace n ON n.oid = "
                   "p.pronamespace WHERE n.nspname = %s AND p.proname = %s")


def select_triggers() -> sql.SQL:
    """Params: the table's qualified name as text; its user triggers by name."""
    return sql.SQL("SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal ORDER BY tgname")


# ---------------------------------------------------------------- printed for the operator


def index_build(maintenance_work_mem: str, parallel_workers: int, index_ddl: sql.Composable) -> sql.Composed:
    """The statements ``spaces.bindings.build_index`` runs (its SETs are LOCAL to the build's transaction)."""
    return sql.SQL(";\n").join([set_maintenance_work_mem(maintenance_work_mem),
                                 set_parallel_maintenance_workers(parallel_workers), index_ddl])
