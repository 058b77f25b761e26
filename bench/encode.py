"""reembed_vs_encode: end-to-end ``reembed()`` against bare ``SentenceTransformer.encode``.

Same texts (the ``documents`` rows), same model object (the ``minilm-256`` space's provider,
MiniLM-L6 truncated to 256 dims; fp16 on CUDA), same batch size (the space's, 64). The bare
side is what a user would write: ``model.encode(all_texts, batch_size=64)``, which also sorts
the whole list by length before batching; the engine hands the model one batch at a time as
it streams rows, so an "encode per 64-row chunk" run is recorded too, to separate that effect
from the engine's own overhead. ``reembed`` runs end to end (canary check, orphan delete,
pending count, stream, write) without the HNSW build, whose time is reported separately.

incremental_vs_full: after the last full pass, 1% of rows are edited and ``reembed`` runs again.
"""

from __future__ import annotations

import statistics
import time

from psycopg import sql

from bench.common import (
    SOURCE,
    bench_config,
    corpus_origin,
    load,
    postgres,
    prepare,
    row_id,
    summary,
    texts,
    touch_rows,
)
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.providers import build_provider
from embedding_pipeline.spaces.bindings import build_index
from embedding_pipeline.spaces.model import space_table_name

SPACE = "minilm-256"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def calibrate(model, batch: int, device: str, sample: int = 256) -> float:
    sample_texts = texts(sample)
    t = time.perf_counter()
    model.encode(sample_texts, batch_size=batch, show_progress_bar=False)
    _sync(device)
    return sample / (time.perf_counter() - t)


def run(*, rows: int | None = None, device: str = "cpu", repeats: int = 3, target_seconds: float = 45.0,
        min_rows: int = 1000, max_rows: int = 20_000, incremental: bool = True, log=print) -> dict:
    cfg = bench_config(device=device)
    space_cfg = cfg.space(SPACE)
    batch = space_cfg.batch_size
    provider = build_provider(SPACE, space_cfg)
    model = provider.model
    provider.embed(texts(batch))  # load weights and warm the kernels before anything is timed
    d: dict = {"device": str(model.device), "model": space_cfg.model, "dims": space_cfg.dimensions, "batch": batch,
               "fp16": device.startswith("cuda"), "corpus": corpus_origin(), "load_before": load()}
    if rows is None:
        rate = calibrate(model, batch, device)
        rows = int(min(max_rows, max(min_rows, rate * target_seconds)) // 500 * 500) or min_rows
        d["calibration_rows_per_s"] = round(rate, 1)
    d["rows"] = rows
    corpus = texts(rows)
    d["mean_chars"] = round(statistics.mean(map(len, corpus)), 1)
    with postgres("encode") as db:
        with db.connect() as conn:
            prepare(conn, cfg, rows, [SPACE], lambda s: provider)
        tbl = sql.Identifier(cfg.project_schema, space_table_name(SOURCE, SPACE))
        bare, ours, full_seconds = [], [], []
        for r in range(repeats):  # interleaved, so both sides see the same machine load
            t = time.perf_counter()
            model.encode(corpus, batch_size=batch, normalize_embeddings=True, show_progress_bar=False)
            _sync(device)
            bare.append(rows / (time.perf_counter() - t))
            with db.connect() as conn:
                conn.execute(sql.SQL("TRUNCATE {}").format(tbl))
                conn.commit()
            # The model's batch size is the space's (= `batch`, as the bare side); reads and commits use the
            # engine's default of several model batches per fetch.
            stats = reembed(db, cfg, SOURCE, SPACE, provider, build_hnsw=False)
            assert stats.embedded == rows, stats.to_json()
            ours.append(stats.embedded / stats.seconds)
            full_seconds.append(stats.seconds)
            log(f"reembed_vs_encode run {r + 1}: bare {bare[-1]:,.1f} rows/s, reembed {ours[-1]:,.1f} rows/s")
        t = time.perf_counter()
        for i in range(0, rows, batch):
            model.encode(corpus[i:i + batch], batch_size=batch, normalize_embeddings=True, show_progress_bar=False)
        _sync(device)
        d["bare_chunked_rows_per_s"] = round(rows / (time.perf_counter() - t), 1)
        # Experiment: the engine reads 16 model batches per fetch, so encode() sorts 1,024 texts by length.
        with db.connect() as conn:
            conn.execute(sql.SQL("TRUNCATE {}").format(tbl))
            conn.commit()
        stats = reembed(db, cfg, SOURCE, SPACE, provider, batch_size=16 * batch, build_hnsw=False)
        d["reembed_read_16_batches_rows_per_s"] = round(stats.embedded / stats.seconds, 1)
        with db.connect() as conn:
            t = time.perf_counter()
            build_index(conn, cfg.space(SPACE).on(SOURCE))
            d["hnsw_build_seconds"] = round(time.perf_counter() - t, 2)
        d["bare_rows_per_s"] = summary(bare, 1)
        d["reembed_rows_per_s"] = summary(ours, 1)
        result = {"reembed_vs_encode": round(statistics.median(ours) / statistics.median(bare), 3)}
        if incremental:
            with db.connect() as conn:
                changed = touch_rows(conn, 0.01)
            stats = reembed(db, cfg, SOURCE, SPACE, provider, batch_size=batch, build_hnsw=False)
            d["incremental"] = {"changed": changed, "embedded": stats.embedded, "seconds": round(stats.seconds, 3),
                                "full_seconds_median": round(statistics.median(full_seconds), 3),
                                "note": "a scheduled pass that finds the edits by content hash; HNSW index present"}
            result["incremental_vs_full"] = round(stats.seconds / statistics.median(full_seconds), 4)
            # The change-capture path: the same edit again, this time handed over as ids.
            with db.connect() as conn:
                touch_rows(conn, 0.01)
            ids = [row_id(i) for i in range(0, rows, 100)]
            stats = reembed(db, cfg, SOURCE, SPACE, provider, ids=ids, batch_size=batch, build_hnsw=False)
            d["incremental_by_ids"] = {"changed": len(ids), "embedded": stats.embedded,
                                       "seconds": round(stats.seconds, 3),
                                       "ratio": round(stats.seconds / statistics.median(full_seconds), 4)}
    provider.close()
    d["load_after"] = load()
    return {**result, "details": {"reembed_vs_encode": d}}
