"""Experiments behind write_vs_copy: the engine's batch SQL and cheaper alternatives, side by side.

Each variant writes the same batches into the same (truncated) space table, single-threaded so
that a pass can be split into COPY / INSERT / COMMIT time. ``engine_sql`` is the staged upsert
``reembed._Writer`` ran before issue 18; the writer now does ``direct_copy_then_prune_async_commit``
(plus a delete of stale rows' vectors). Run with ``write.run(with_variants=True)``:

- ``analyze_stage``: ANALYZE the staging table after COPY. Without statistics the planner
  guesses ~29k staged rows and answers the eligibility EXISTS with a hash join over the whole
  source table, once per batch: a pass costs O(source rows x batches).
- ``check_by_id_array``: the eligibility check driven by the batch's ids (``= ANY(%(ids)s)``),
  an index scan on the source's key whatever the planner guesses about the stage.
- ``direct_copy_then_prune``: ids with no stored vector (the reader already knows which: its
  LEFT JOIN finds no row) are copied straight into the target, no staging; rows that stopped
  being eligible meanwhile are deleted by key afterwards, in the same transaction.
- ``async_commit``: ``SET LOCAL synchronous_commit = off`` per batch. A crash may lose the last
  few committed batches; the next pass re-embeds them (their vectors are absent), so resumability
  is unchanged.
"""

from __future__ import annotations

import threading
import time

from psycopg import sql

from bench.common import PRECOMPUTED, SOURCE
from embedding_pipeline.spaces.model import space_table_name

UPSERT = ("INSERT INTO {tbl} (source_id, model_version, content_sha256, embedding, embedded_at) "
          "SELECT st.source_id, {mv}, st.content_sha256, st.embedding, now() FROM ep_stage st {where} {conflict}")
CHECKS = {
    "exists": "WHERE EXISTS (SELECT 1 FROM ({el}) s WHERE s.id = st.source_id)",
    "ids": "WHERE st.source_id IN (SELECT s.id FROM ({el}) s WHERE s.id = ANY(%(ids)s))",
    None: "",
}
CONFLICT = ("ON CONFLICT (source_id) DO UPDATE SET model_version = EXCLUDED.model_version, "
            "content_sha256 = EXCLUDED.content_sha256, embedding = EXCLUDED.embedding, embedded_at = EXCLUDED.embedded_at")
PRUNE = ("DELETE FROM {tbl} t WHERE t.source_id = ANY(%(ids)s) "
         "AND NOT EXISTS (SELECT 1 FROM ({el}) s WHERE s.id = t.source_id AND s.id = ANY(%(ids)s))")

VARIANTS = {
    "engine_sql": {"check": "exists"},
    "analyze_stage": {"check": "exists", "analyze": True},
    "check_by_id_array": {"check": "ids"},
    "no_eligibility_check": {"check": None},
    "plain_insert_no_conflict": {"check": None, "conflict": False},
    "direct_copy_no_check": {"direct": True},
    "direct_copy_then_prune": {"direct": True, "prune": True},
    "check_by_id_array_async_commit": {"check": "ids", "async_commit": True},
    "direct_copy_then_prune_async_commit": {"direct": True, "prune": True, "async_commit": True},
}


def target(cfg) -> sql.Identifier:
    return sql.Identifier(cfg.project_schema, space_table_name(SOURCE, PRECOMPUTED))


def _statements(cfg, source, v: dict):
    tbl, el = target(cfg), source.eligible_rows()
    mv = cfg.space(PRECOMPUTED).model_version
    if v.get("direct"):
        copy = sql.SQL("COPY {} (source_id, content_sha256, embedding, model_version) FROM STDIN (FORMAT BINARY)").format(tbl)
        stmt = sql.SQL(PRUNE).format(tbl=tbl, el=el) if v.get("prune") else None
        return copy, stmt, (mv,)
    copy = sql.SQL("COPY ep_stage (source_id, content_sha256, embedding) FROM STDIN (FORMAT BINARY)")
    stmt = sql.SQL(UPSERT).format(tbl=tbl, mv=sql.Literal(mv), where=sql.SQL(CHECKS[v.get("check")]).format(el=el),
                                  conflict=sql.SQL(CONFLICT if v.get("conflict", True) else ""))
    return copy, stmt, ()


def _open(db, cfg, truncate: bool):
    conn = db.connect()
    if truncate:
        conn.execute(sql.SQL("TRUNCATE {}").format(target(cfg)))
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS ep_stage (source_id text, content_sha256 bytea, "
                 "embedding vector) ON COMMIT DELETE ROWS")
    conn.commit()
    return conn


def _loop(conn, feed, v: dict, statements, start: float, time_box: float | None, split: dict) -> tuple[int, bool]:
    """Write batches from `feed` (a callable returning the next batch or None) until it runs dry or time is up."""
    copy, stmt, extra = statements
    with_ids = stmt is not None and "%(ids)s" in stmt.as_string(conn)
    done = 0
    while (item := feed()) is not None:
        ids, shas, vecs = item
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            if v.get("async_commit"):
                cur.execute("SET LOCAL synchronous_commit = off")
            with cur.copy(copy) as cp:
                cp.set_types(["text", "bytea", "vector"] + ["text"] * len(extra))
                for row in zip(ids, shas, vecs):
                    cp.write_row(row + extra)
            t1 = time.perf_counter()
            if v.get("analyze"):
                cur.execute("ANALYZE ep_stage")
            t2 = time.perf_counter()
            if stmt is not None:
                cur.execute(stmt, {"ids": ids} if with_ids else None)
        t3 = time.perf_counter()
        conn.commit()
        t4 = time.perf_counter()
        for k, dt in zip(split, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            split[k] += dt
        done += len(ids)
        if time_box is not None and t4 - start > time_box:
            return done, True
    return done, False


def variant_pass(db, cfg, source, batches, name: str, *, time_box: float | None = None) -> dict:
    """Write `batches` with one variant; total rows/s and the split per step (time-boxed if asked)."""
    v = VARIANTS[name]
    split = {"copy": 0.0, "analyze": 0.0, "statement": 0.0, "commit": 0.0}
    it = iter(batches)
    with _open(db, cfg, truncate=True) as conn:
        start = time.perf_counter()
        done, timed_out = _loop(conn, lambda: next(it, None), v, _statements(cfg, source, v), start, time_box, split)
        total = time.perf_counter() - start
    return {"rows": done, "seconds": round(total, 2), "rows_per_s": round(done / total, 1), "time_boxed": timed_out,
            "split_seconds": {k: round(x, 2) for k, x in split.items()}}


def parallel_pass(db, cfg, source, batches, name: str, *, workers: int = 2, time_box: float | None = None) -> dict:
    """The same variant on `workers` connections taking batches in turn: one connection's COPY overlaps the
    other's statement and commit (the engine's single writer leaves the client idle while the server works)."""
    v = VARIANTS[name]
    it, lock = iter(batches), threading.Lock()

    def feed():
        with lock:
            return next(it, None)

    conns = [_open(db, cfg, truncate=(k == 0)) for k in range(workers)]
    results: list = [None] * workers
    start = time.perf_counter()

    def work(k):
        results[k] = _loop(conns[k], feed, v, _statements(cfg, source, v), start, time_box,
                           {"copy": 0.0, "analyze": 0.0, "statement": 0.0, "commit": 0.0})

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.perf_counter() - start
    for c in conns:
        c.close()
    done = sum(r[0] for r in results)
    return {"rows": done, "seconds": round(total, 2), "rows_per_s": round(done / total, 1), "workers": workers,
            "time_boxed": any(r[1] for r in results)}


def explain(db, cfg, source, batch, name: str = "engine_sql") -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of one variant's statement for one batch of new ids (rolled back)."""
    ids, shas, vecs = batch
    _, stmt, _ = _statements(cfg, source, VARIANTS[name])
    with db.connect() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(target(cfg)))
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS ep_stage (source_id text, content_sha256 bytea, "
                     "embedding vector) ON COMMIT DELETE ROWS")
        with conn.cursor() as cur:
            with cur.copy("COPY ep_stage (source_id, content_sha256, embedding) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["text", "bytea", "vector"])
                for row in zip(ids, shas, vecs):
                    cp.write_row(row)
            query = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) {}").format(stmt)
            plan = cur.execute(query, {"ids": ids} if "%(ids)s" in stmt.as_string(conn) else None).fetchall()
        conn.rollback()
    return "\n".join(r[0] for r in plan)
