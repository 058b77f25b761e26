"""drift: the three drift modes against their baselines, at 1M rows (1% changed, capture trigger on).

version: ``collect(mode='version')`` against a bare ``GROUP BY model_version``. full: the engine's
full check against the minimal single statement computing the same numbers (``minimal_sql``).
incremental: the check from the capture queue (the trigger's per-row eligibility and digests,
then the space table by key) against the full check; and what the trigger adds to the
application's writes (``_trigger_write_cost``).

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
from embedding_pipeline.drift.stats import collect, ensure_drift_tables, record
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
    q = lambda tpl, stale, e=el: sql.SQL(tpl).format(stale=sql.SQL(stale).format(h=hash_expr(fp, sql.SQL("s.content"))),
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


def minimal_sql(cfg, tbl) -> sql.Composed:
    """The minimal single statement computing the full check's four numbers (coverage, stale, orphans,
    versions), written here from the definitions, not taken from the engine: one FULL JOIN of the eligible
    rows (filter passes, text not blank) with the space table, grouped by version, stale by recomputed hash."""
    el = sql.SQL("SELECT id, content FROM public.documents WHERE (deleted_at IS NULL) AND content ~ '\\S'")
    return sql.SQL(ONE_PASS).format(
        stale=sql.SQL("e.content_sha256 <> {}").format(hash_expr(cfg.space(PRECOMPUTED).fingerprint,
                                                                 sql.SQL("s.content"))), el=el, tbl=tbl)


def _trigger_write_cost(conn, changed: float, repeats: int) -> dict:
    """What the capture trigger (with its digests) adds to the application's writes: the same UPDATE of
    ``changed`` of the rows (rows not edited before) with the trigger on and off, each rolled back."""
    from embedding_pipeline.embeddings.capture import trigger_name

    step = max(1, round(1 / changed))
    update = sql.SQL("UPDATE public.documents SET content = content || ' (w)', updated_at = now() "
                     "WHERE mod(right(id, 7)::int, {}) = 1").format(sql.Literal(step))
    off = sql.SQL("ALTER TABLE public.documents DISABLE TRIGGER {}").format(sql.Identifier(trigger_name(SOURCE)))
    t: dict[str, list[float]] = {"trigger": [], "no_trigger": []}
    rows = 0
    for _ in range(repeats):
        for label in ("no_trigger", "trigger"):
            with conn.transaction(force_rollback=True):
                if label == "no_trigger":
                    conn.execute(off)
                started = time.perf_counter()
                rows = conn.execute(update).rowcount
                t[label].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"rows": rows, "seconds": {k: summary(v, 4) for k, v in t.items()},
            "added_us_per_row": round(1e6 * (med["trigger"] - med["no_trigger"]) / max(rows, 1), 1)}


def _collect_seconds(conn, cfg, mode: str):
    t = time.perf_counter()
    drifts = collect(conn, cfg, SOURCE, mode=mode)
    conn.commit()
    return time.perf_counter() - t, drifts


def run(*, rows: int = 1_000_000, repeats: int = 3, changed: float = 0.01, with_variants: bool = False,
        log=print) -> dict:
    """The three drift modes, each against its own baseline, interleaved ``repeats`` times after a warm-up:
    version vs a bare GROUP BY, full vs the minimal single statement, incremental vs full."""
    from embedding_pipeline.embeddings.capture import enable_capture

    cfg = bench_config()
    provider = PrecomputedProvider(PRECOMPUTED, cfg.space(PRECOMPUTED))
    d: dict = {"rows": rows, "repeats": repeats, "load_before": load()}
    with postgres("drift") as db, db.connect() as conn:
        source = prepare(conn, cfg, rows, [PRECOMPUTED], lambda s: provider)
        tbl = sql.Identifier(cfg.project_schema, space_table_name(SOURCE, PRECOMPUTED))
        enable_capture(conn, cfg, SOURCE, mode="trigger")  # before the proof, as the incremental premise wants
        conn.commit()
        _fill(conn, cfg, tbl)
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE documents")
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(tbl))
        conn.autocommit = False
        ensure_drift_tables(conn, cfg.project_schema)
        conn.commit()
        _, proof = _collect_seconds(conn, cfg, "full")  # the clean full check incremental builds on
        with conn.transaction():
            record(conn, cfg.project_schema, proof)
        d["proof"] = proof[0].to_json()
        d["edited_rows"] = touch_rows(conn, changed)  # queued by the capture trigger, now stale
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE documents")
        conn.autocommit = False
        groupby = sql.SQL("SELECT model_version, count(*) FROM {} GROUP BY 1").format(tbl)
        minimal = minimal_sql(cfg, tbl)
        for mode in ("version", "full", "incremental"):  # warm-up, and the numbers each reports
            _, drifts = _collect_seconds(conn, cfg, mode)
            d[f"{mode}_result"] = drifts[0].to_json()
        _timed(conn, groupby)
        _timed(conn, minimal)
        conn.commit()
        t = {k: [] for k in ("version", "groupby", "full", "minimal_sql", "incremental")}
        for r in range(repeats):
            t["groupby"].append(_timed(conn, groupby))
            conn.commit()
            t["version"].append(_collect_seconds(conn, cfg, "version")[0])
            t["minimal_sql"].append(_timed(conn, minimal))
            conn.commit()
            t["full"].append(_collect_seconds(conn, cfg, "full")[0])
            t["incremental"].append(_collect_seconds(conn, cfg, "incremental")[0])
            log(f"drift run {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in t.items()))
        d["seconds"] = {k: summary(v, 4) for k, v in t.items()}
        d["app_write_cost"] = _trigger_write_cost(conn, changed, repeats)
        d["explain_minimal_sql"] = "\n".join(r[0] for r in conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, BUFFERS) {}").format(minimal)).fetchall())
        conn.commit()
        if with_variants:
            vs = variants(cfg, source, tbl)
            d["variants_seconds"] = {name: summary([_timed(conn, q) for _ in range(2)], 3) for name, q in vs.items()}
        d["table_sizes_mb"] = dict(conn.execute(sql.SQL(
            "SELECT 'source', pg_total_relation_size('documents') / 1048576 UNION ALL "
            "SELECT 'space', pg_total_relation_size({}) / 1048576").format(
                sql.Literal(f"{cfg.project_schema}.\"{space_table_name(SOURCE, PRECOMPUTED)}\""))).fetchall())
    d["load_after"] = load()
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"drift_version_vs_groupby": round(med["version"] / med["groupby"], 3),
            "drift_full_vs_sql": round(med["full"] / med["minimal_sql"], 3),
            "drift_incremental_vs_full": round(med["incremental"] / med["full"], 4),
            "details": {"drift": d}}
