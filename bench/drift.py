"""drift_vs_groupby: the drift stats query against a bare ``GROUP BY model_version``, at 1M rows.

``coverage.space_counts`` answers eligible / stored / covered / stale / orphans in one FULL
JOIN of the eligible source rows with the space table, recomputing each row's content hash
(sha256 over the space fingerprint and the text) to find stale vectors, then a second scan of
the space table for the ``model_version`` distribution. The baseline is that second scan alone.

The space table is filled server-side (vectors from a 4,096-vector pool table) and 1% of the
source is then edited, so the stale count is non-zero. After a warm-up, contenders alternate.
The variants are proposals for a cheaper stale detection, measured on the same tables.
"""

from __future__ import annotations

import statistics
import time

from psycopg import sql

from bench.common import (
    PRECOMPUTED,
    SOURCE,
    PrecomputedProvider,
    bench_config,
    load,
    postgres,
    prepare,
    summary,
    touch_rows,
    unit_vectors,
)
from embedding_pipeline.embeddings.coverage import space_counts
from embedding_pipeline.spaces.model import hash_expr, space_table_name

# {h} is the stale predicate's left side; {el} the eligible-rows subquery; {tbl} the space table.
COUNTS = ("SELECT count(s.id), count(e.source_id), "
          "count(*) FILTER (WHERE s.id IS NOT NULL AND e.source_id IS NOT NULL), "
          "count(*) FILTER (WHERE s.id IS NOT NULL AND e.source_id IS NOT NULL AND {stale}), "
          "count(*) FILTER (WHERE s.id IS NULL) FROM ({el}) s FULL JOIN {tbl} e ON e.source_id = s.id")
ONE_PASS = ("SELECT e.model_version, count(s.id), count(e.source_id), "
            "count(*) FILTER (WHERE s.id IS NOT NULL AND e.source_id IS NOT NULL), "
            "count(*) FILTER (WHERE s.id IS NOT NULL AND e.source_id IS NOT NULL AND {stale}), "
            "count(*) FILTER (WHERE s.id IS NULL) FROM ({el}) s FULL JOIN {tbl} e ON e.source_id = s.id GROUP BY 1")


def _fill(conn, cfg, tbl) -> None:
    """One vector per eligible row, hashed as the engine hashes, without a client round trip per row."""
    conn.execute("CREATE TABLE pool (i int PRIMARY KEY, v vector(384))")
    with conn.cursor() as cur, cur.copy("COPY pool (i, v) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types(["int4", "vector"])
        for i, v in enumerate(unit_vectors(4096, 384)):
            cp.write_row((i, v))
    conn.execute(sql.SQL(
        "INSERT INTO {tbl} (source_id, model_version, content_sha256, embedding) "
        "SELECT s.id, {mv}, {h}, p.v FROM documents s JOIN pool p ON p.i = mod(abs(hashtext(s.id)), 4096)").format(
            tbl=tbl, mv=sql.Literal(cfg.space(PRECOMPUTED).model_version),
            h=hash_expr(cfg.space(PRECOMPUTED).fingerprint, sql.SQL("s.content"))))
    conn.commit()


def _timed(conn, query, params=None) -> float:
    t = time.perf_counter()
    conn.execute(query, params).fetchall()
    return time.perf_counter() - t


def variants(cfg, source, tbl) -> dict:
    """Alternative stale predicates and shapes, each a complete statement (proposals only)."""
    fp = cfg.space(PRECOMPUTED).fingerprint
    el = source.eligible_rows()
    el_upd = sql.SQL("SELECT id, content, updated_at FROM public.documents WHERE (deleted_at IS NULL) AND content ~ '\\S'")
    el_hash = sql.SQL("SELECT id, content_hash FROM public.documents WHERE (deleted_at IS NULL) AND content ~ '\\S'")
    q = lambda tpl, stale, e=el: sql.SQL(tpl).format(stale=sql.SQL(stale).format(h=hash_expr(fp, sql.SQL("s.content"))),  # noqa: E731
                                                     el=e, tbl=tbl)
    return {
        "engine_counts_query": q(COUNTS, "e.content_sha256 <> {h}"),
        "no_stale_check": q(COUNTS, "false"),
        "stale_by_md5": q(COUNTS, "e.content_sha256 <> decode(md5(s.content), 'hex')"),
        "stale_by_updated_at": q(COUNTS, "s.updated_at > e.embedded_at", el_upd),
        "stale_by_stored_source_hash": q(COUNTS, "e.content_sha256 <> s.content_hash", el_hash),
        "one_pass_with_versions_sha256": q(ONE_PASS, "e.content_sha256 <> {h}"),
        "one_pass_with_versions_updated_at": q(ONE_PASS, "s.updated_at > e.embedded_at", el_upd),
        # The hash join spills to disk at the default work_mem (4MB); these run with 64MB.
        "engine_counts_query_work_mem_64MB": q(COUNTS, "e.content_sha256 <> {h}"),
        "one_pass_with_versions_updated_at_work_mem_64MB": q(ONE_PASS, "s.updated_at > e.embedded_at", el_upd),
        # No join at all: eligible and stored counts only (coverage without orphans or stale).
        "counts_without_join": sql.SQL("SELECT (SELECT count(*) FROM ({el}) s), (SELECT count(*) FROM {tbl})").format(
            el=el, tbl=tbl),
    }


def run(*, rows: int = 1_000_000, repeats: int = 3, log=print) -> dict:
    cfg = bench_config()
    provider = PrecomputedProvider(PRECOMPUTED, cfg.space(PRECOMPUTED))
    d: dict = {"rows": rows, "repeats": repeats, "load_before": load()}
    with postgres("drift") as db, db.connect() as conn:
        source = prepare(conn, cfg, rows, [PRECOMPUTED], lambda s: provider)
        tbl = sql.Identifier(cfg.project_schema, space_table_name(SOURCE, PRECOMPUTED))
        _fill(conn, cfg, tbl)
        d["edited_rows"] = touch_rows(conn, 0.01)
        # The stored-hash proposal: a source column kept by trigger (filled once here).
        conn.execute("ALTER TABLE documents ADD COLUMN content_hash bytea")
        conn.execute(sql.SQL("UPDATE documents s SET content_hash = {}").format(
            hash_expr(cfg.space(PRECOMPUTED).fingerprint, sql.SQL("s.content"))))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE documents")
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(tbl))
        groupby = sql.SQL("SELECT model_version, count(*) FROM {} GROUP BY 1").format(tbl)
        counts = space_counts(conn, cfg, source, PRECOMPUTED)  # warm-up, and the numbers it reports
        _timed(conn, groupby)
        d["counts"] = counts.to_json()
        ours, base = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            space_counts(conn, cfg, source, PRECOMPUTED)
            ours.append(time.perf_counter() - t)
            base.append(_timed(conn, groupby))
            log(f"drift: space_counts {ours[-1]:.2f}s, GROUP BY {base[-1]:.2f}s")
        d["space_counts_seconds"] = summary(ours, 3)
        d["groupby_seconds"] = summary(base, 3)
        vs = variants(cfg, source, tbl)
        d["variants_seconds"] = {}
        for name, query in vs.items():
            conn.execute("SET work_mem = '64MB'" if name.endswith("work_mem_64MB") else "RESET work_mem")
            _timed(conn, query)
            d["variants_seconds"][name] = summary([_timed(conn, query) for _ in range(2)], 3)
            log(f"drift: variant {name}: {d['variants_seconds'][name]}")
        conn.execute("RESET work_mem")
        d["explain_engine_counts"] = "\n".join(r[0] for r in conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, BUFFERS) {}").format(vs["engine_counts_query"])).fetchall())
        d["explain_groupby"] = "\n".join(r[0] for r in conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, BUFFERS) {}").format(groupby)).fetchall())
        d["sha256_only_seconds"] = round(_timed(conn, sql.SQL(
            "SELECT count(*) FROM documents s WHERE {} IS NOT NULL").format(
                hash_expr(cfg.space(PRECOMPUTED).fingerprint, sql.SQL("s.content")))), 3)
        d["table_sizes_mb"] = dict(conn.execute(sql.SQL(
            "SELECT 'source', pg_total_relation_size('documents') / 1048576 UNION ALL "
            "SELECT 'space', pg_total_relation_size({}) / 1048576").format(
                sql.Literal(f"{cfg.project_schema}.\"{space_table_name(SOURCE, PRECOMPUTED)}\""))).fetchall())
    d["load_after"] = load()
    ratio = statistics.median(ours) / statistics.median(base)
    return {"drift_vs_groupby": round(ratio, 3), "details": {"drift": d}}
