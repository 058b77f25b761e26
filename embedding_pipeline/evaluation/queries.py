"""Every SQL statement of the evaluation package, composed with ``psycopg.sql``.

Grouped by purpose: DDL and locks (eval sets, smoke results), the BEIR corpus import, eval sets
(store, load, sample from a source), the runner's reads and its ``eval_reports`` row, the batched
search of one space (``search``: stored, candidate and excluded rows, the top-k statement, its
planner settings) and the smoke results. The package's modules import it as ``statements``:
there, "queries" already means the eval sets' queries.

Identifiers are always ``sql.Identifier``; values are query parameters passed by the caller.
The one raw fragment is the operator's ``row_filter`` (config, checked by
``spaces.source.inspect_source``); the distance operator comes from ``spaces.model.DISTANCE``.
"""

from __future__ import annotations

from psycopg import sql

from embedding_pipeline.read_path.queries import set_local  # noqa: F401 (the read path's own, re-exported)
from embedding_pipeline.spaces.model import DISTANCE

# ---------------------------------------------------------------- DDL and locks


def lock_ddl() -> sql.SQL:
    """Params: the lock key (``EVAL_DDL_LOCK``, ``SMOKE_DDL_LOCK``); held until the transaction ends."""
    return sql.SQL("SELECT pg_advisory_xact_lock(%s)")


def create_schema(schema: str) -> sql.Composed:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))


_EVAL_DDL = [
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """CREATE TABLE IF NOT EXISTS {s}.eval_sets (
        name text PRIMARY KEY,
        source text NOT NULL,
        kind text NOT NULL CHECK (kind IN ('labeled', 'unlabeled')),
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.eval_queries (
        set_name text NOT NULL REFERENCES {s}.eval_sets(name) ON DELETE CASCADE,
        query_id text NOT NULL,
        text text NOT NULL,
        PRIMARY KEY (set_name, query_id)
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.eval_qrels (
        set_name text NOT NULL,
        query_id text NOT NULL,
        doc_id text NOT NULL,
        grade integer NOT NULL,
        PRIMARY KEY (set_name, query_id, doc_id),
        FOREIGN KEY (set_name, query_id) REFERENCES {s}.eval_queries(set_name, query_id) ON DELETE CASCADE
    )""",
]


def create_eval_tables(schema: str) -> list[sql.Composed]:
    """The schema, eval_sets, eval_queries and eval_qrels, each IF NOT EXISTS."""
    return [sql.SQL(stmt).format(s=sql.Identifier(schema)) for stmt in _EVAL_DDL]


def create_smoke_table(schema: str) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.smoke_results ("
        "space text PRIMARY KEY, at timestamptz NOT NULL, result jsonb NOT NULL)").format(sql.Identifier(schema))


# ---------------------------------------------------------------- BEIR corpus import (through a staging table)


def create_corpus_table(table: sql.Identifier) -> sql.Composed:
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, content text)").format(table)


def create_staging(staging: sql.Identifier) -> sql.Composed:
    return sql.SQL("CREATE TEMP TABLE {} (id text, content text) ON COMMIT DROP").format(staging)


def copy_into_staging(staging: sql.Identifier) -> sql.Composed:
    return sql.SQL("COPY {} (id, content) FROM STDIN").format(staging)


def upsert_from_staging(table: sql.Identifier, staging: sql.Identifier) -> sql.Composed:
    """New and changed rows only: an unchanged row is not rewritten, so change capture stays quiet."""
    return sql.SQL(
        "INSERT INTO {t} (id, content) SELECT id, content FROM {s} "
        "ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content "
        "WHERE {t}.content IS DISTINCT FROM EXCLUDED.content"
    ).format(t=table, s=staging)


def delete_missing_from_staging(table: sql.Identifier, staging: sql.Identifier) -> sql.Composed:
    return sql.SQL("DELETE FROM {t} t WHERE NOT EXISTS (SELECT 1 FROM {s} s WHERE s.id = t.id)").format(
        t=table, s=staging)


def drop_table(table: sql.Identifier) -> sql.Composed:
    return sql.SQL("DROP TABLE {}").format(table)


def count_rows(table: sql.Identifier) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}").format(table)


# ---------------------------------------------------------------- eval sets


def delete_eval_set(schema: str) -> sql.Composed:
    """Params: name; cascades to its queries and qrels."""
    return sql.SQL("DELETE FROM {}.eval_sets WHERE name = %s").format(sql.Identifier(schema))


def insert_eval_set(schema: str) -> sql.Composed:
    """Params: name, source, kind."""
    return sql.SQL("INSERT INTO {}.eval_sets (name, source, kind) VALUES (%s, %s, %s)").format(sql.Identifier(schema))


def copy_eval_queries(schema: str) -> sql.Composed:
    return sql.SQL("COPY {}.eval_queries (set_name, query_id, text) FROM STDIN").format(sql.Identifier(schema))


def copy_eval_qrels(schema: str) -> sql.Composed:
    return sql.SQL("COPY {}.eval_qrels (set_name, query_id, doc_id, grade) FROM STDIN").format(sql.Identifier(schema))


def select_eval_set(schema: str) -> sql.Composed:
    """Params: name; (source, kind)."""
    return sql.SQL("SELECT source, kind FROM {}.eval_sets WHERE name = %s").format(sql.Identifier(schema))


def select_eval_queries(schema: str) -> sql.Composed:
    """Params: set name; (query_id, text)."""
    return sql.SQL("SELECT query_id, text FROM {}.eval_queries WHERE set_name = %s ORDER BY query_id").format(
        sql.Identifier(schema))


def select_eval_qrels(schema: str) -> sql.Composed:
    """Params: set name; (query_id, doc_id, grade)."""
    return sql.SQL(
        "SELECT query_id, doc_id, grade FROM {}.eval_qrels WHERE set_name = %s ORDER BY query_id, doc_id").format(
            sql.Identifier(schema))


def sample_rows(table: sql.Identifier, id_column: str, text_column: str, row_filter: str | None) -> sql.Composed:
    """Params: seed (text), n; (id as text, text) of ``n`` non-blank rows in ``md5(seed || id)`` order.

    The order depends only on the seed and the ids, not on the physical order of the table.
    """
    idc, txt = sql.Identifier(id_column), sql.Identifier(text_column)
    where = sql.SQL("{txt} IS NOT NULL AND btrim({txt}) <> ''").format(txt=txt)
    if row_filter:
        where = sql.SQL("({}) AND ({})").format(where, sql.SQL(row_filter))
    return sql.SQL("SELECT {i}::text, {txt} FROM {t} WHERE {w} ORDER BY md5(%s || {i}::text), {i}::text LIMIT %s").format(
        i=idc, txt=txt, t=table, w=where)


# ---------------------------------------------------------------- runner


def lock_eval_set() -> sql.SQL:
    """Params: the lock key (``eval-set:<source>``); one sampler per source at a time."""
    return sql.SQL("SELECT pg_advisory_xact_lock(hashtext(%s))")


def select_newest_eval_set(schema: str, *, labeled_only: bool = False) -> sql.Composed:
    """Params: source; the newest labeled set, else (unless ``labeled_only``) the newest unlabeled one."""
    if labeled_only:
        query = ("SELECT name FROM {}.eval_sets WHERE source = %s AND kind = 'labeled' "
                 "ORDER BY created_at DESC, name LIMIT 1")
    else:
        query = ("SELECT name FROM {}.eval_sets WHERE source = %s "
                 "ORDER BY kind = 'labeled' DESC, created_at DESC, name LIMIT 1")
    return sql.SQL(query).format(sql.Identifier(schema))


def count_eligible_ids(eligible: sql.Composable) -> sql.Composed:
    """Params: a list of ids as text; how many of them are ``eligible`` rows."""
    return sql.SQL("SELECT count(*) FROM ({}) s WHERE s.id::text = ANY(%s)").format(eligible)


def insert_report(schema: str) -> sql.Composed:
    """Params: the 9 columns in order; returns the id."""
    return sql.SQL(
        "INSERT INTO {}.eval_reports (source, eval_set, kind, active_space, candidate_space, metrics, gate_passed, "
        "tolerance, report_path) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
    ).format(sql.Identifier(schema))


# ---------------------------------------------------------------- batched search of one space
# ``target`` is a ``search.SearchTarget``; not imported here, since ``search`` imports this module.


def select_legacy_hnsw() -> sql.SQL:
    """Params: schema, table, column; a row when any HNSW index covers that column."""
    return sql.SQL(
        "SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE am.amname = 'hnsw' AND n.nspname = %s AND t.relname = %s AND a.attname = %s")


def stored_rows(target) -> sql.Composed:
    """``SELECT id, embedding`` of every vector stored for this space, eligible or not."""
    c = target.source.cfg
    if target.storage == "legacy_column":
        return sql.SQL("SELECT t.{id} AS id, t.{vec} AS embedding FROM {tbl} t WHERE t.{vec} IS NOT NULL").format(
            id=sql.Identifier(c.id_column), vec=sql.Identifier(target.vector_column), tbl=target.source.ident)
    return sql.SQL("SELECT e.source_id AS id, e.embedding FROM {tbl} e").format(
        tbl=sql.Identifier(target.schema, target.table))


def candidate_rows(target) -> sql.Composed:
    """``SELECT id, embedding`` of the eligible rows that have a vector in this space, and nothing else."""
    # EXISTS, not JOIN: the planner keeps the HNSW index order of the stored rows under a semi-join.
    return sql.SQL("SELECT a.id, a.embedding FROM ({stored}) a WHERE EXISTS (SELECT 1 FROM ({eligible}) s "
                   "WHERE s.id = a.id)").format(stored=stored_rows(target), eligible=target.source.eligible_rows())


def excluded_ids(target) -> sql.Composed:
    """Ids with a stored vector whose source row is no longer eligible (deleted, filtered, blank)."""
    return sql.SQL("SELECT a.id::text FROM ({stored}) a WHERE NOT EXISTS (SELECT 1 FROM ({eligible}) s "
                   "WHERE s.id = a.id)").format(stored=stored_rows(target), eligible=target.source.eligible_rows())


def search_batch(target, mode: str) -> sql.Composed:
    """Params ``qv`` (query vectors), ``k``: for each query vector, in order, the ids of its top ``k`` rows.

    ``mode`` is 'exact' or 'hnsw' (checked by the caller). Exact mode scans the stored vectors
    directly (a semi-join per query would rebuild its hash 300 times); the caller asks for ``k``
    plus the number of excluded ids and drops those. Ties on distance break by id, so two runs
    (and numpy) rank identically.
    """
    op, qtype = sql.SQL(DISTANCE[target.ops]), sql.SQL(target.vector_type)
    if mode == "exact":
        inner = sql.SQL("SELECT c.id, c.embedding {op} q.v AS dist FROM ({rows}) c ORDER BY dist, c.id LIMIT %(k)s")
        rows, order = stored_rows(target), sql.SQL("t.dist, t.id")
    else:
        inner = sql.SQL("SELECT c.id, c.embedding {op} q.v AS dist FROM ({rows}) c ORDER BY c.embedding {op} q.v "
                        "LIMIT %(k)s")
        rows, order = candidate_rows(target), sql.SQL("t.dist")
    return sql.SQL(
        "SELECT q.ord, r.ids FROM unnest(%(qv)s::{qt}[]) WITH ORDINALITY AS q(v, ord) "
        "CROSS JOIN LATERAL (SELECT array_agg(t.id::text ORDER BY {order}) AS ids FROM ({inner}) t) r "
        "ORDER BY q.ord"
    ).format(qt=qtype, order=order, inner=inner.format(op=op, rows=rows))


def reset_local(name: str) -> sql.Composed:
    """``SET LOCAL name TO DEFAULT``; ``name`` may be dotted (``hnsw.ef_search``)."""
    return sql.SQL("SET LOCAL {} TO DEFAULT").format(sql.Identifier(*name.split(".")))


# ---------------------------------------------------------------- smoke results


def upsert_smoke(schema: str) -> sql.Composed:
    """Params: space, at, result (JSON text); keeps the latest result per space."""
    return sql.SQL(
        "INSERT INTO {}.smoke_results (space, at, result) VALUES (%s, %s, %s::jsonb) "
        "ON CONFLICT (space) DO UPDATE SET at = EXCLUDED.at, result = EXCLUDED.result").format(sql.Identifier(schema))


def select_smoke(schema: str) -> sql.Composed:
    """Params: space."""
    return sql.SQL("SELECT result FROM {}.smoke_results WHERE space = %s").format(sql.Identifier(schema))


# ---------------------------------------------------------------- the quality baseline (baseline.py)

_BASELINE_ROWS = """
SELECT id, at, (metrics->'active'->>'ndcg@10')::float8 AS ndcg, 'active' AS role,
       coalesce((metrics->>'baseline_accepted')::boolean, false) AS accepted
  FROM {s}.eval_reports
 WHERE source = %(source)s AND active_space = %(space)s AND eval_set = %(eval_set)s AND kind = 'labeled'
   AND metrics->'active' ? 'ndcg@10'
UNION ALL
SELECT id, at, (metrics->'candidate'->>'ndcg@10')::float8, 'candidate', false
  FROM {s}.eval_reports
 WHERE source = %(source)s AND candidate_space = %(space)s AND active_space <> candidate_space
   AND eval_set = %(eval_set)s AND kind = 'labeled' AND gate_passed AND metrics->'candidate' ? 'ndcg@10'
"""


def select_baseline(schema: str) -> sql.Composed:
    """Params: source, space, eval_set; (report id, at, nDCG@10, role, accepted) of the baseline.

    The newest accepted report wins, else the first result: as the active space, or as a
    candidate whose shadow eval passed its gate.
    """
    return sql.SQL("SELECT id, at, ndcg, role, accepted FROM (" + _BASELINE_ROWS + ") b "
                   "ORDER BY accepted DESC, CASE WHEN accepted THEN at END DESC, at, id LIMIT 1").format(
                       s=sql.Identifier(schema))


def accept_baseline(schema: str) -> sql.Composed:
    """Params: report id (labeled reports only)."""
    return sql.SQL("UPDATE {}.eval_reports SET metrics = metrics || jsonb_build_object('baseline_accepted', true) "
                   "WHERE id = %s AND kind = 'labeled'").format(sql.Identifier(schema))


def quality_baselines_exist(schema: str) -> sql.Composed:
    """(quality_baselines exists, eval_reports exists)."""
    return sql.SQL("SELECT count(*) FILTER (WHERE tablename = 'quality_baselines') > 0, "
                   "count(*) FILTER (WHERE tablename = 'eval_reports') > 0 FROM pg_tables WHERE schemaname = {}"
                   ).format(sql.Literal(schema))


def select_old_baselines(schema: str) -> sql.Composed:
    return sql.SQL("SELECT source, space, eval_set, ndcg_at_10, at FROM {}.quality_baselines ORDER BY at").format(
        sql.Identifier(schema))


def select_report_for_old_baseline(schema: str) -> sql.Composed:
    """Params: source, space, eval_set, ndcg, at; the newest labeled report at or before it with that nDCG@10."""
    return sql.SQL(
        "SELECT id FROM {}.eval_reports WHERE source = %(source)s AND active_space = %(space)s "
        "AND eval_set = %(eval_set)s AND kind = 'labeled' AND at <= %(at)s "
        "AND abs((metrics->'active'->>'ndcg@10')::float8 - %(ndcg)s) < 1e-9 ORDER BY at DESC, id DESC LIMIT 1"
    ).format(sql.Identifier(schema))


def drop_quality_baselines(schema: str) -> sql.Composed:
    return sql.SQL("DROP TABLE IF EXISTS {}.quality_baselines").format(sql.Identifier(schema))
