"""The read path: per source, one view and one search function over the active space only.

``<project_schema>."<source>_active_embedding"`` (source_id, embedding, space, model_version)
selects either the adopted legacy column of the source table or a per-model table joined to the
source's eligible rows, so filtered, soft-deleted and blank rows never appear.
``<project_schema>."<source>_search"(query, k)`` orders that view by the space's distance.

A switch (cutover.py) replaces both in the same transaction that updates the bindings, under
the ``cutover:<source>`` advisory lock. The view is dropped and created rather than replaced
because its vector column changes type when dimensions differ; readers wait on the view's lock
and then see the old or the new definition, never a mix.

Python ``search()`` runs in a REPEATABLE READ transaction that first locks the view (LOCK takes
no snapshot, so the snapshot is taken after any switch in flight has committed) and then reads
the binding: binding and view always agree, and a query embedded for a space that stopped being
active before the lock was granted is embedded again with the active space's provider.
"""

from __future__ import annotations

import json
import threading
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db import Database
from embedding_pipeline.errors import DatabaseError, EmbeddingPipelineError
from embedding_pipeline.spaces import HAS_TEXT, SourceTable, binding, inspect_source, model_version

DISTANCE = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}
EF_SEARCH_MAX = 1000  # pgvector's upper bound for hnsw.ef_search


def lock_key(source: str) -> str:
    """The advisory-lock key of every switch of a source (spaces.initialise_active uses it too)."""
    return f"cutover:{source}"


def view_name(source: str) -> str:
    return f"{source}_active_embedding"


def search_function_name(source: str) -> str:
    return f"{source}_search"


class Hit(NamedTuple):
    source_id: Any
    distance: float


@dataclass
class SearchResult:
    """Ranked hits, all from one space (the one active in the snapshot that produced them)."""

    source: str
    space: str
    model_version: str
    hits: list[Hit] = field(default_factory=list)
    # True when the active space changed after the query was embedded and it was embedded again.
    reembedded: bool = False

    @property
    def ids(self) -> list:
        return [h.source_id for h in self.hits]

    def to_json(self) -> dict:
        return {"source": self.source, "space": self.space, "model_version": self.model_version,
                "reembedded": self.reembedded,
                "hits": [{"rank": i + 1, "source_id": h.source_id, "distance": h.distance}
                         for i, h in enumerate(self.hits)]}


# ---------------------------------------------------------------- building the read path


def _operator(config: PipelineConfig, space: str) -> sql.SQL:
    return sql.SQL(DISTANCE[config.space(space).index.ops])


def _vector_type(conn, config: PipelineConfig, b: dict) -> str:
    """'vector' or 'halfvec': the stored type of the binding's vectors."""
    if b["storage"] == "table":
        return config.space(b["space"]).storage_type
    row = conn.execute(
        "SELECT t.typname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped",
        (b["table_schema"], b["table_name"], b["vector_column"])).fetchone()
    if row is None or row[0] not in ("vector", "halfvec"):
        raise DatabaseError(f"{b['table_schema']}.{b['table_name']}.{b['vector_column']} is missing or not a "
                            "vector/halfvec column; check legacy_vector_column in the config")
    return row[0]


def space_rows(config: PipelineConfig, source: SourceTable, b: dict) -> sql.Composed:
    """SELECT source_id, embedding, space, model_version of one binding's eligible rows."""
    space = b["space"]
    labels = {"space": sql.Literal(space), "mv": sql.Literal(model_version(space, config.space(space)))}
    if b["storage"] == "legacy_column":
        c = source.cfg
        filt = sql.SQL(c.row_filter) if c.row_filter else sql.SQL("true")
        # No table alias: the operator's filter may name the table itself.
        return sql.SQL(
            "SELECT {id} AS source_id, {vec} AS embedding, {space}::text AS space, {mv}::text AS model_version "
            "FROM {tbl} WHERE ({filt}) AND {text} " + HAS_TEXT + " AND {vec} IS NOT NULL"
        ).format(id=sql.Identifier(c.id_column), vec=sql.Identifier(b["vector_column"]),
                 tbl=sql.Identifier(b["table_schema"], b["table_name"]), filt=filt,
                 text=sql.Identifier(c.text_column), **labels)
    return sql.SQL(
        "SELECT e.source_id, e.embedding, {space}::text AS space, e.model_version FROM {tbl} e "
        "WHERE EXISTS (SELECT 1 FROM ({eligible}) s WHERE s.id = e.source_id)"
    ).format(tbl=sql.Identifier(b["table_schema"], b["table_name"]), eligible=source.eligible_rows(), **labels)


PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "EXECUTE"}


def _grants(conn, acl_query: str, params: tuple) -> list[tuple[str | None, str]]:
    """(grantee, None for PUBLIC; privilege) of an ACL, the owner's own entries excluded."""
    rows = conn.execute(sql.SQL(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type "
        "FROM ({}) o, aclexplode(o.acl) a WHERE a.grantee <> o.owner").format(sql.SQL(acl_query)), params).fetchall()
    return [(g, p) for g, p in rows if p in PRIVILEGES]


def _regrant(conn, target: sql.Composable, grants: list[tuple[str | None, str]]) -> None:
    for grantee, privilege in grants:
        conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(privilege), target, sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)))


_VIEW_ACL = ("SELECT c.relacl AS acl, c.relowner AS owner FROM pg_class c JOIN pg_namespace n "
             "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s")
_FUNCTION = ("SELECT p.proacl AS acl, p.proowner AS owner, t.typname FROM pg_proc p JOIN pg_namespace n "
             "ON n.oid = p.pronamespace LEFT JOIN pg_type t ON t.oid = p.proargtypes[0] "
             "WHERE n.nspname = %s AND p.proname = %s")


_versions: "weakref.WeakKeyDictionary[Any, tuple[int, ...]]" = weakref.WeakKeyDictionary()


def pgvector_version(conn) -> tuple[int, ...]:
    """pgvector's (major, minor), read once per connection."""
    if conn not in _versions:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        _versions[conn] = tuple(int(p) for p in row[0].split(".")[:2]) if row else (0, 0)
    return _versions[conn]


def install_read_path(conn, config: PipelineConfig, source: SourceTable, b: dict) -> None:
    """Point the view and the search function at binding ``b``.

    Call inside the transaction that changes the bindings, holding the source's lock. Grants on
    the view survive the drop: applications keep their SELECT across a switch.
    """
    schema, vname = config.project_schema, view_name(source.name)
    view = sql.Identifier(schema, vname)
    vtype = _vector_type(conn, config, b)
    grants = _grants(conn, _VIEW_ACL, (schema, vname))
    conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(view))
    conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(view, space_rows(config, source, b)))
    comment = {"space": b["space"], "storage": b["storage"],
               "model_version": model_version(b["space"], config.space(b["space"]))}
    conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(view, sql.Literal(json.dumps(comment))))
    _regrant(conn, view, grants)
    _install_search_function(conn, config, source, b, vtype)


def _install_search_function(conn, config: PipelineConfig, source: SourceTable, b: dict, vtype: str) -> None:
    schema, fname = config.project_schema, search_function_name(source.name)
    fn = sql.Identifier(schema, fname)
    existing = conn.execute(_FUNCTION, (schema, fname)).fetchall()
    acl_set = bool(existing) and existing[0][0] is not None
    grants = _grants(conn, _FUNCTION, (schema, fname)) if acl_set else []
    replaced = len(existing) == 1 and existing[0][2] == vtype
    if existing and not replaced:
        # vector <-> halfvec changes the argument type, which CREATE OR REPLACE would add as an overload.
        conn.execute(sql.SQL("DROP FUNCTION {}").format(fn))
    op = _operator(config, b["space"])
    body = sql.SQL("SELECT v.source_id, (v.embedding {op} query)::double precision FROM {view} v "
                   "ORDER BY v.embedding {op} query LIMIT k").format(
                       op=op, view=sql.Identifier(schema, view_name(source.name)))
    settings = [sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(str(config.space(b["space"]).index.ef_search)))]
    if pgvector_version(conn) >= (0, 8):
        # Rows filtered out by the view would otherwise leave fewer than k hits.
        settings.append(sql.SQL("SET hnsw.iterative_scan = 'strict_order'"))
    conn.execute(sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}(query {vtype}, k integer DEFAULT 10) "
        "RETURNS TABLE (source_id {idt}, distance double precision) LANGUAGE sql STABLE {settings} AS {body}"
    ).format(fn=fn, vtype=sql.SQL(vtype), idt=sql.SQL(source.id_type), settings=sql.SQL(" ").join(settings),
             body=sql.Literal(body.as_string(conn))))
    if acl_set and not replaced:
        # A fresh function is executable by PUBLIC; restore the ACL the operator had set.
        conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(fn))
        _regrant(conn, sql.SQL("FUNCTION {}").format(fn), grants)


def served_space(conn, config: PipelineConfig, source: str) -> str | None:
    """The space the view currently reads (from its comment), or None when there is no view."""
    row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                       (sql.Identifier(config.project_schema, view_name(source)).as_string(conn),)).fetchone()
    return _comment_space(row[0] if row else None)


def _comment_space(comment: str | None) -> str | None:
    if comment is None:
        return None
    try:
        return json.loads(comment).get("space")
    except (ValueError, AttributeError):
        return None


def active_binding(conn, schema: str, source: str) -> dict | None:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        sql.SQL("SELECT * FROM {}.bindings WHERE source = %s AND status = 'active'").format(sql.Identifier(schema)),
        (source,)).fetchone()


def ensure_read_path(conn, config: PipelineConfig, source: str) -> str | None:
    """Create (or repair) the read path for the active space; return that space (None: no active one).

    The usual case is one statement. A view that disagrees with the binding is normally a switch
    committing between the two reads: it is repaired only when no switch holds the lock.
    Commits on ``conn``: call it with no transaction of your own open.
    """
    schema = config.project_schema
    space, comment = conn.execute(sql.SQL(
        "SELECT (SELECT space FROM {}.bindings WHERE source = %s AND status = 'active'), "
        "obj_description(to_regclass(%s), 'pg_class')").format(sql.Identifier(schema)),
        (source, sql.Identifier(schema, view_name(source)).as_string(conn))).fetchone()
    conn.commit()
    served = _comment_space(comment)
    if space is None or served == space:
        return space
    src = inspect_source(conn, source, config.source(source))
    conn.commit()
    with conn.transaction():
        if served is None:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key(source),))
        elif not conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (lock_key(source),)).fetchone()[0]:
            return space  # a switch is committing; the search's view lock orders us after it
        b = active_binding(conn, schema, source)
        if b is not None and served_space(conn, config, source) != b["space"]:
            install_read_path(conn, config, src, b)
    conn.commit()
    return b["space"] if b else None


# ---------------------------------------------------------------- searching

_providers: dict[tuple[str, str], Any] = {}
_providers_lock = threading.Lock()
_embed_locks: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()


def default_provider_for(config: PipelineConfig):
    """Providers built once per process per space identity."""
    from embedding_pipeline.providers import build_provider

    def provider_for(space: str):
        cfg = config.space(space)
        with _providers_lock:
            key = (space, cfg.fingerprint)
            if key not in _providers:
                _providers[key] = build_provider(space, cfg)
            return _providers[key]
    return provider_for


def embed_query(provider, text: str):
    # Fast tokenizers raise "Already borrowed" when one instance is used from two threads at once.
    with _providers_lock:
        lock = _embed_locks.setdefault(provider, threading.Lock())
    with lock:
        return provider.embed_queries([text])[0]


def _param(vtype: str, vector):
    from pgvector import HalfVector, Vector

    return HalfVector(vector) if vtype == "halfvec" else Vector(vector)


@contextmanager
def _local_settings(conn, settings: dict[str, str]):
    """Transaction-local settings, restored afterwards so a caller's own transaction is not changed."""
    with conn.transaction():
        old = {k: conn.execute("SELECT current_setting(%s, true)", (k,)).fetchone()[0] for k in settings}
        for k, v in settings.items():
            conn.execute("SELECT set_config(%s, %s, true)", (k, v))
        try:
            yield
        finally:
            if not conn.broken and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                for k, v in old.items():
                    if v is not None:
                        conn.execute("SELECT set_config(%s, %s, true)", (k, v))


def _ann_settings(conn, config: PipelineConfig, space: str, k: int) -> dict[str, str]:
    settings = {"hnsw.ef_search": str(min(max(config.space(space).index.ef_search, k), EF_SEARCH_MAX))}
    if pgvector_version(conn) >= (0, 8):
        settings["hnsw.iterative_scan"] = "strict_order"
    return settings


def search_space(conn, config: PipelineConfig, source: str, space: str, query_vector, k: int,
                 exact: bool = False) -> list[Hit]:
    """The k nearest eligible rows in ONE given space (active or not); for evaluation.

    ``exact=True`` turns index scans off for the query so the answer is the true top k.
    """
    b = binding(conn, config.project_schema, source, space)
    if b is None or b["status"] == "deleted":
        state = "was deleted" if b else "has no table"
        raise EmbeddingPipelineError(f"space {space!r} {state} for source {source!r}; nothing to search")
    src = SourceTable(source, config.source(source), id_type="")  # id_type is not needed to read
    op = _operator(config, space)
    settings = ({"enable_indexscan": "off", "enable_bitmapscan": "off", "enable_indexonlyscan": "off"} if exact
                else _ann_settings(conn, config, space, k))
    q = _param(_vector_type(conn, config, b), query_vector)
    with _local_settings(conn, settings):
        rows = conn.execute(sql.SQL(
            "SELECT v.source_id, (v.embedding {op} %(q)s)::double precision FROM ({rows}) v "
            "ORDER BY v.embedding {op} %(q)s LIMIT %(k)s").format(op=op, rows=space_rows(config, src, b)),
            {"q": q, "k": k}).fetchall()
    return [Hit(r[0], r[1]) for r in rows]


@contextmanager
def _connection(db_or_conn):
    if isinstance(db_or_conn, Database):
        with db_or_conn.connect() as conn:
            yield conn
    else:
        with nullcontext(db_or_conn) as conn:
            yield conn


def search(db_or_conn, config: PipelineConfig, source: str, query_text: str, k: int = 10,
           provider_for=None) -> SearchResult:
    """The k nearest rows of the source in its active space, the query embedded by that space.

    ``db_or_conn``: a Database, or a connection with no transaction open (the search needs its
    own REPEATABLE READ transaction). ``provider_for(space)`` defaults to providers cached per process.
    """
    provider_for = provider_for or default_provider_for(config)
    with _connection(db_or_conn) as conn:
        if config.source(source).mode == "lazy":
            from embedding_pipeline.lazy import fused_search

            return fused_search(conn, config, source, query_text, provider_for, k)
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise EmbeddingPipelineError("search() needs a connection with no open transaction "
                                         "(it reads the binding and the view in one snapshot of its own)")
        guess = ensure_read_path(conn, config, source)
        if guess is None:
            raise EmbeddingPipelineError(f"source {source!r} has no active space yet; run `embedding-pipeline "
                                         f"setup --source {source}` first")
        vector = embed_query(provider_for(guess), query_text)
        saved = conn.isolation_level
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            return _search_in_snapshot(conn, config, source, query_text, k, provider_for, guess, vector)
        finally:
            conn.isolation_level = saved


def _search_in_snapshot(conn, config, source, query_text, k, provider_for, guess, vector) -> SearchResult:
    schema = config.project_schema
    with conn.transaction():
        # Before any snapshot: waits for a switch in flight, then the snapshot sees its result.
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
            sql.Identifier(schema, view_name(source))))
        b = active_binding(conn, schema, source)
        if b is None:
            raise EmbeddingPipelineError(f"source {source!r} has no active space")
        space = b["space"]
        reembedded = space != guess
        if reembedded:
            vector = embed_query(provider_for(space), query_text)
        for name, value in _ann_settings(conn, config, space, k).items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        op = _operator(config, space)
        rows = conn.execute(sql.SQL(
            "SELECT source_id, (embedding {op} %(q)s)::double precision, space, model_version FROM {view} "
            "ORDER BY embedding {op} %(q)s LIMIT %(k)s").format(op=op, view=sql.Identifier(schema, view_name(source))),
            {"q": _param(_vector_type(conn, config, b), vector), "k": k}).fetchall()
    served = {r[2] for r in rows}
    if served - {space}:
        raise DatabaseError(f"the read path of {source!r} serves {sorted(served)} but the active space is {space!r}; "
                            "run `embedding-pipeline status` and report this")
    mv = rows[0][3] if rows else model_version(space, config.space(space))
    return SearchResult(source, space, mv, [Hit(r[0], r[1]) for r in rows], reembedded)
