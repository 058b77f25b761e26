"""The read path: per source, one view and one search function over the active space only.

``<project_schema>."<source>_active_embedding"`` (source_id, embedding, space, model_version)
selects either the adopted legacy column of the source table or a per-model table joined to the
source's eligible rows, so filtered, soft-deleted and blank rows never appear.
``<project_schema>."<source>_search"(query, k)`` orders that view by the space's distance.

A switch (``cutover.switch``) replaces both in the same transaction that updates the bindings, under
the ``cutover:<source>`` advisory lock. The view is dropped and created rather than replaced
because its vector column changes type when dimensions differ; readers wait on the view's lock
and then see the old or the new definition, never a mix.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db import queries as db_queries
from embedding_pipeline.errors import DatabaseError
from embedding_pipeline.read_path import queries
from embedding_pipeline.spaces.bindings import active_binding, lock_key
from embedding_pipeline.spaces.model import Binding, Space
from embedding_pipeline.spaces.source import SourceTable, inspect_source


def view_name(source: str) -> str:
    return f"{source}_active_embedding"


def search_function_name(source: str) -> str:
    return f"{source}_search"


def vector_type(conn, space: Space, b: Binding) -> str:
    """'vector' or 'halfvec': the stored type of the binding's vectors."""
    if not b.is_legacy:
        return space.storage_type
    row = conn.execute(queries.select_column_type(), (b.table_schema, b.table_name, b.vector_column)).fetchone()
    if row is None or row[0] not in ("vector", "halfvec"):
        raise DatabaseError(f"{b.table_schema}.{b.table_name}.{b.vector_column} is missing or not a "
                            "vector/halfvec column; check legacy_vector_column in the config")
    return row[0]


def space_rows(space: Space, source: SourceTable, b: Binding) -> sql.Composed:
    """SELECT source_id, embedding, space, model_version of one binding's eligible rows."""
    if b.is_legacy:
        return source.legacy_rows(space, b.vector_column)
    return space.on(source).rows(source)


PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "EXECUTE"}


def _grants(conn, acl: sql.Composable, params: tuple) -> list[tuple[str | None, str]]:
    """(grantee, None for PUBLIC; privilege) of an ACL, the owner's own entries excluded."""
    rows = conn.execute(queries.select_grants(acl), params).fetchall()
    return [(g, p) for g, p in rows if p in PRIVILEGES]


def _regrant(conn, target: sql.Composable, grants: list[tuple[str | None, str]]) -> None:
    for grantee, privilege in grants:
        conn.execute(queries.grant(privilege, target, grantee))


_versions: "weakref.WeakKeyDictionary[Any, tuple[int, ...]]" = weakref.WeakKeyDictionary()


def pgvector_version(conn) -> tuple[int, ...]:
    """pgvector's (major, minor), read once per connection."""
    if conn not in _versions:
        row = conn.execute(db_queries.select_vector_version()).fetchone()
        _versions[conn] = tuple(int(p) for p in row[0].split(".")[:2]) if row else (0, 0)
    return _versions[conn]


def install_read_path(conn, config: PipelineConfig, source: SourceTable, b: Binding) -> None:
    """Point the view and the search function at binding ``b``.

    Call inside the transaction that changes the bindings, holding the source's lock. Grants on
    the view survive the drop: applications keep their SELECT across a switch.
    """
    schema, vname = config.project_schema, view_name(source.name)
    view = sql.Identifier(schema, vname)
    space = config.space(b.space)
    vtype = vector_type(conn, space, b)
    grants = _grants(conn, queries.view_acl(), (schema, vname))
    conn.execute(queries.drop_view(view))
    conn.execute(queries.create_view(view, space_rows(space, source, b)))
    comment = {"space": b.space, "storage": b.storage, "model_version": space.model_version}
    conn.execute(queries.comment_on_view(view, json.dumps(comment)))
    _regrant(conn, view, grants)
    _install_search_function(conn, config, source, space, vtype)


def _install_search_function(conn, config: PipelineConfig, source: SourceTable, space: Space, vtype: str) -> None:
    schema, fname = config.project_schema, search_function_name(source.name)
    fn = sql.Identifier(schema, fname)
    existing = conn.execute(queries.function_acl(), (schema, fname)).fetchall()
    acl_set = bool(existing) and existing[0][0] is not None
    grants = _grants(conn, queries.function_acl(), (schema, fname)) if acl_set else []
    replaced = len(existing) == 1 and existing[0][2] == vtype
    if existing and not replaced:
        # vector <-> halfvec changes the argument type, which CREATE OR REPLACE would add as an overload.
        conn.execute(queries.drop_function(fn))
    body = queries.search_function_body(sql.Identifier(schema, view_name(source.name)), space.distance)
    conn.execute(queries.create_search_function(fn, vtype, source.id_type, space.index.ef_search,
                                                pgvector_version(conn) >= (0, 8), body.as_string(conn)))
    if acl_set and not replaced:
        # A fresh function is executable by PUBLIC; restore the ACL the operator had set.
        conn.execute(queries.revoke_function_from_public(fn))
        _regrant(conn, queries.function(fn), grants)


def served_space(conn, config: PipelineConfig, source: str) -> str | None:
    """The space the view currently reads (from its comment), or None when there is no view."""
    row = conn.execute(queries.select_view_comment(),
                       (sql.Identifier(config.project_schema, view_name(source)).as_string(conn),)).fetchone()
    return _comment_space(row[0] if row else None)


def _comment_space(comment: str | None) -> str | None:
    if comment is None:
        return None
    try:
        return json.loads(comment).get("space")
    except (ValueError, AttributeError):
        return None


def ensure_read_path(conn, config: PipelineConfig, source: str) -> str | None:
    """Create (or repair) the read path for the active space; return that space (None: no active one).

    The usual case is one statement. A view that disagrees with the binding is normally a switch
    committing between the two reads: it is repaired only when no switch holds the lock.
    Commits on ``conn``: call it with no transaction of your own open.
    """
    schema = config.project_schema
    space, comment = conn.execute(
        queries.select_active_and_view_comment(schema),
        (source, sql.Identifier(schema, view_name(source)).as_string(conn))).fetchone()
    conn.commit()
    served = _comment_space(comment)
    if space is None or served == space:
        return space
    src = inspect_source(conn, source, config.source(source))
    conn.commit()
    with conn.transaction():
        if served is None:
            conn.execute(queries.lock_source(), (lock_key(source),))
        elif not conn.execute(queries.try_lock_source(), (lock_key(source),)).fetchone()[0]:
            return space  # a switch is committing; the search's view lock orders us after it
        b = active_binding(conn, schema, source)
        if b is not None and served_space(conn, config, source) != b.space:
            install_read_path(conn, config, src, b)
    conn.commit()
    return b.space if b else None
