"""write_vs_copy: the engine's vector write path against a raw binary COPY of the same vectors.

"Ours" is ``reembed._Writer`` itself (binary COPY into a temporary staging table, then
``INSERT ... SELECT ... WHERE EXISTS (eligible) ON CONFLICT DO UPDATE``, one transaction per
batch, on its own thread) fed precomputed unit vectors, so no model is in the loop. The limit
is one psycopg binary COPY of the same ids, hashes and vectors into a plain table (no key, no
constraint). Both sides pay the same per-row Python cost (``write_row`` with the same types).

The engine's passes are time-boxed: each batch costs the same (see ``write_variants``), so
rows written / seconds is its steady rate without spending an hour per size on a slow engine.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
from psycopg import sql

from bench import write_variants
from bench.common import (
    PRECOMPUTED,
    PrecomputedProvider,
    bench_config,
    load,
    postgres,
    prepare,
    row_id,
    summary,
    unit_vectors,
)
from embedding_pipeline.embeddings.reembed import _Writer

POOL = 4096


def batches(n: int, batch: int, pool: np.ndarray, start: int = 0):
    """(ids, shas, vectors) per batch, generated on the fly identically for every contender."""
    for lo in range(start, start + n, batch):
        hi = min(lo + batch, start + n)
        ids = [row_id(i) for i in range(lo, hi)]
        yield ids, [hashlib.sha256(i.encode()).digest() for i in ids], pool[np.arange(lo, hi) % len(pool)]


def engine_pass(db, cfg, source, n: int, batch: int, pool, time_box: float | None = None) -> dict:
    """The engine's own writer thread, from the first batch to the last commit."""
    with db.connect() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(write_variants.target(cfg)))
        conn.commit()
    writer = _Writer(db, source, cfg.space(PRECOMPUTED).on(source))
    t, sent, boxed = time.perf_counter(), 0, False
    for ids, shas, vecs in batches(n, batch, pool):
        writer.put(ids, shas, vecs, [False] * len(ids), ids)  # a first pass: no row holds a vector yet
        sent += len(ids)
        if time_box is not None and time.perf_counter() - t > time_box:
            boxed = True
            break
    writer.close()
    elapsed = time.perf_counter() - t
    assert writer.written == sent, f"writer wrote {writer.written} of {sent}"
    return {"rows": sent, "seconds": round(elapsed, 2), "rows_per_s": round(sent / elapsed, 1), "time_boxed": boxed}


def raw_copy(db, n: int, pool, *, batch: int | None = None, primary_key: bool = False) -> float:
    """Rows/s of a binary COPY into a plain table: one stream (batch=None) or one COPY + commit per batch."""
    with db.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS raw_copy")
        key = sql.SQL(" PRIMARY KEY") if primary_key else sql.SQL("")
        conn.execute(sql.SQL("CREATE TABLE raw_copy (source_id text{}, content_sha256 bytea, embedding vector(384))")
                     .format(key))
        conn.commit()
        t = time.perf_counter()
        with conn.cursor() as cur:
            groups = [batches(n, 5000, pool)] if batch is None else ([b] for b in batches(n, batch, pool))
            for group in groups:
                with cur.copy("COPY raw_copy (source_id, content_sha256, embedding) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["text", "bytea", "vector"])
                    for ids, shas, vecs in group:
                        for row in zip(ids, shas, vecs):
                            cp.write_row(row)
                conn.commit()
        elapsed = time.perf_counter() - t
        conn.execute("DROP TABLE raw_copy")
        conn.commit()
    return round(n / elapsed, 1)


def fair_copy(db, cfg, n: int, pool) -> float:
    """Rows/s of one binary COPY stream into a table identical to the space table (same columns, primary key
    with its INCLUDE, model_version CHECK, no HNSW index): the limit a write path into that table can reach."""
    space = write_variants.target(cfg)
    mv = cfg.space(PRECOMPUTED).model_version
    with db.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS fair_copy")
        conn.execute(sql.SQL("CREATE TABLE fair_copy (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(space))
        conn.execute("ALTER TABLE fair_copy ADD PRIMARY KEY (source_id) INCLUDE (model_version, content_sha256)")
        conn.commit()
        t = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY fair_copy (source_id, content_sha256, embedding, model_version) "
                                            "FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["text", "bytea", "vector", "text"])
            for ids, shas, vecs in batches(n, 5000, pool):
                for row in zip(ids, shas, vecs):
                    cp.write_row((*row, mv))
        conn.commit()
        elapsed = time.perf_counter() - t
        conn.execute("DROP TABLE fair_copy")
        conn.commit()
    return round(n / elapsed, 1)


def run(*, rows: int = 1_000_000, batch_sizes=(2048,), repeats: int = 3, time_box: float | None = None,
        variant_time_box: float = 15.0, raw_variant_rows: int = 200_000, with_variants: bool = False,
        log=print) -> dict:
    cfg = bench_config()
    pool = unit_vectors(POOL, 384)
    d: dict = {"rows": rows, "batch_sizes": list(batch_sizes), "repeats": repeats, "engine_time_box_s": time_box,
               "vectors": f"{POOL} random unit vectors of 384 dims, cycled", "load_before": load()}
    with postgres("write") as db:
        provider = PrecomputedProvider(PRECOMPUTED, cfg.space(PRECOMPUTED))
        with db.connect() as conn:
            source = prepare(conn, cfg, rows, [PRECOMPUTED], lambda name: provider)
        raw, fair, ours = [], [], {b: [] for b in batch_sizes}
        for r in range(repeats):  # interleaved, so both sides see the same machine load
            raw.append(raw_copy(db, rows, pool))
            fair.append(fair_copy(db, cfg, rows, pool))
            log(f"write_vs_copy: run {r + 1}: raw COPY into a plain table {raw[-1]:,.0f} rows/s, into a copy of "
                f"the space table {fair[-1]:,.0f} rows/s")
            for b in batch_sizes:
                ours[b].append(engine_pass(db, cfg, source, rows, b, pool, time_box))
                log(f"write_vs_copy: engine, batch {b}, run {r + 1}: {ours[b][-1]}")
        med = {b: float(np.median([x["rows_per_s"] for x in v])) for b, v in ours.items()}
        best = max(batch_sizes, key=med.get)
        d.update(raw_copy_rows_per_s=summary(raw, 1), fair_copy_rows_per_s=summary(fair, 1),
                 engine_runs={str(b): v for b, v in ours.items()},
                 engine_rows_per_s={str(b): round(m, 1) for b, m in med.items()}, best_batch=best,
                 ratio_by_batch={str(b): round(m / float(np.median(fair)), 3) for b, m in med.items()},
                 ratio_vs_plain_copy_by_batch={str(b): round(m / float(np.median(raw)), 3) for b, m in med.items()})
        if not with_variants:
            d["load_after"] = load()
            return {"write_vs_copy": round(med[best] / float(np.median(fair)), 3), "details": {"write_vs_copy": d}}
        # Where the gap goes: cheaper limits first, then each engine step swapped for an alternative.
        n = min(raw_variant_rows, rows)
        limits = {"rows": n, "batch": best, "single_stream": raw_copy(db, n, pool),
                  "commit_per_batch": raw_copy(db, n, pool, batch=best),
                  "commit_per_batch_primary_key": raw_copy(db, n, pool, batch=best, primary_key=True)}
        log(f"write_vs_copy: raw COPY limits {limits}")
        variants = {"batch": best, "time_box_s": variant_time_box}
        for name in write_variants.VARIANTS:
            variants[name] = write_variants.variant_pass(db, cfg, source, batches(rows, best, pool), name,
                                                         time_box=variant_time_box)
            log(f"write_vs_copy: variant {name}: {variants[name]}")
        variants["check_by_id_array_batch_10000"] = write_variants.variant_pass(
            db, cfg, source, batches(rows, 10_000, pool), "check_by_id_array", time_box=variant_time_box)
        variants["direct_copy_then_prune_async_commit_batch_10000"] = write_variants.variant_pass(
            db, cfg, source, batches(rows, 10_000, pool), "direct_copy_then_prune_async_commit",
            time_box=variant_time_box)
        for name in ("check_by_id_array_async_commit", "direct_copy_then_prune_async_commit"):
            variants[f"two_writers_{name}"] = write_variants.parallel_pass(
                db, cfg, source, batches(rows, best, pool), name, workers=2, time_box=variant_time_box)
            log(f"write_vs_copy: two writers, {name}: {variants[f'two_writers_{name}']}")
        d.update(raw_copy_limits=limits, variants=variants,
                 explain_engine_upsert=write_variants.explain(db, cfg, source, next(batches(best, best, pool))),
                 explain_check_by_id_array=write_variants.explain(db, cfg, source, next(batches(best, best, pool)),
                                                                  "check_by_id_array"))
    d["load_after"] = load()
    return {"write_vs_copy": round(med[best] / float(np.median(fair)), 3), "details": {"write_vs_copy": d}}
