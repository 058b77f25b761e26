"""Every SQL statement of the read path, composed with ``psycopg.sql``.

Grouped by purpose: the catalog reads the installer needs (column types, ACLs, pgvector's
version, the view's comment), the per-source view and search function with their grants, the
locks and planner settings around a search, and the k-NN queries themselves (over one space's
rows, over the view, and the lazy strategy's presence check).

Identifiers are always ``sql.Identifier`` (built by the caller for the view, function and
tables); values are query parameters, except inside DDL, where PostgreSQL takes none and they
are ``sql.Literal``. The distance operator arrives composed, from ``Space.distance``.
"""

from __future__ import annotations

from psycopg import sql

# The cutover lock (spaces.bindings.lock_key) is one statement, written where the bindings are.
from embedding_pipeline.spaces.queries import lock_source  # noqa: F401 (re-exported)

# ---------------------------------------------------------------- catalog


def select_column_type() -> sql.SQL:
    """Params: schema, table, column; the type's name (``vector``, ``halfvec``, ...)."""
    return sql.SQL(
        "SELECT t.typname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped")


def select_view_comment() -> sql.SQL:
    """Params: the view's qualified name as text (NULL comment when there is no view)."""
    return sql.SQL("SELECT obj_description(to_regclass(%s), 'pg_class')")


def select_active_and_view_comment(schema: str) -> sql.Composed:
    """Params: source, the view's qualified name as text; both reads in one statement, one snapshot."""
    return sql.SQL(
        "SELECT (SELECT space FROM {}.bindings WHERE source = %s AND status = 'active'), "
        "obj_description(to_regclass(%s), 'pg_class')").format(sql.Identifier(schema))


# ---------------------------------------------------------------- grants


def view_acl() -> sql.SQL:
    """Params: schema, view name; (acl, owner) for ``select_grants``."""
    return sql.SQL("SELECT c.relacl AS acl, c.relowner AS owner FROM pg_class c JOIN pg_namespace n "
                   "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s")


def function_acl() -> sql.SQL:
    """Params: schema, function name; (acl, owner, first argument's type) per overload."""
    return sql.SQL("SELECT p.proacl AS acl, p.proowner AS owner, t.typname FROM pg_proc p JOIN pg_namespace n "
                   "ON n.oid = p.pronamespace LEFT JOIN pg_type t ON t.oid = p.proargtypes[0] "
                   "WHERE n.nspname = %s AND p.proname = %s")


def select_grants(acl: sql.Composable) -> sql.Composed:
    """(grantee or NULL for PUBLIC, privilege) of the ACL that ``acl`` selects, the owner's own entries excluded."""
    return sql.SQL(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type "
        "FROM ({}) o, aclexplode(o.acl) a WHERE a.grantee <> o.owner").format(acl)


def grant(privilege: str, target: sql.Composable, grantee: str | None) -> sql.Composed:
    """``privilege`` comes from the catalog's own ACL (checked against a fixed set by the caller)."""
    return sql.SQL("GRANT {} ON {} TO {}").format(
        sql.SQL(privilege), target, sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee))


# ---------------------------------------------------------------- the view and the search function


def drop_view(view: sql.Identifier) -> sql.Composed:
    return sql.SQL("DROP VIEW IF EXISTS {}").format(view)


def create_view(view: sql.Identifier, rows: sql.Composable) -> sql.Composed:
    return sql.SQL("CREATE VIEW {} AS {}").format(view, rows)


def comment_on_view(view: sql.Identifier, comment: str) -> sql.Composed:
    return sql.SQL("COMMENT ON VIEW {} IS {}").format(view, sql.Literal(comment))


def function(fn: sql.Identifier) -> sql.Composed:
    """``FUNCTION fn``: the object of a GRANT."""
    return sql.SQL("FUNCTION {}").format(fn)


def drop_function(fn: sql.Identifier) -> sql.Composed:
    return sql.SQL("DROP FUNCTION {}").format(fn)


def revoke_function_from_public(fn: sql.Identifier) -> sql.Composed:
    return sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(fn)


def search_function_body(view: sql.Identifier, op: sql.Composable) -> sql.Composed:
    """The search function's body: the view ordered by distance to ``query``, ``k`` rows."""
    return sql.SQL("SELECT v.source_id, (v.embedding {op} query)::double precision FROM {view} v "
                   "ORDER BY v.embedding {op} query LIMIT k").format(op=op, view=view)


def create_search_function(fn: sql.Identifier, vector_type: str, id_type: str, ef_search: int,
                           iterative_scan: bool, body: str) -> sql.Composed:
    """``fn(query, k DEFAULT 10)``; ``body`` is rendered already (it is a string literal of the DDL)."""
    settings = [sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(str(ef_search)))]
    if iterative_scan:
        # Rows filtered out by the view would otherwise leave fewer than k hits.
        settings.append(sql.SQL("SET hnsw.iterative_scan = 'strict_order'"))
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}(query {vtype}, k integer DEFAULT 10) "
        "RETURNS TABLE (source_id {idt}, distance double precision) LANGUAGE sql STABLE {settings} AS {body}"
    ).format(fn=fn, vtype=sql.SQL(vector_type), idt=sql.SQL(id_type), settings=sql.SQL(" ").join(settings),
             body=sql.Literal(body))


# ---------------------------------------------------------------- locks and settings around a search


def try_lock_source() -> sql.SQL:
    """Params: the lock key; true when taken (``lock_source`` is the waiting form)."""
    return sql.SQL("SELECT pg_try_advisory_xact_lock(hashtext(%s))")


def lock_view(view: sql.Identifier) -> sql.Composed:
    """Takes no snapshot: a search waits here for a switch in flight, then sees its result."""
    return sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(view)


def current_setting() -> sql.SQL:
    """Params: name; NULL when the setting is unknown."""
    return sql.SQL("SELECT current_setting(%s, true)")


def set_local() -> sql.SQL:
    """Params: name, value; transaction-local (``set_config(..., true)``)."""
    return sql.SQL("SELECT set_config(%s, %s, true)")


# ---------------------------------------------------------------- k nearest neighbours


def nearest_in_rows(rows: sql.Composable, op: sql.Composable) -> sql.Composed:
    """Params ``q`` (query vector), ``k``: (source_id, distance) of one space's ``rows``."""
    return sql.SQL(
        "SELECT v.source_id, (v.embedding {op} %(q)s)::double precision FROM ({rows}) v "
        "ORDER BY v.embedding {op} %(q)s LIMIT %(k)s").format(op=op, rows=rows)


def nearest_in_view(view: sql.Identifier, op: sql.Composable) -> sql.Composed:
    """Params ``q``, ``k``: (source_id, distance, space, model_version) from the active space's view."""
    return sql.SQL(
        "SELECT source_id, (embedding {op} %(q)s)::double precision, space, model_version FROM {view} "
        "ORDER BY embedding {op} %(q)s LIMIT %(k)s").format(op=op, view=view)


def select_present_ids(table: sql.Identifier) -> sql.Composed:
    """Params: a list of ids; those that have a vector in ``table``."""
    return sql.SQL("SELECT source_id FROM {} WHERE source_id = ANY(%s)").format(table)
