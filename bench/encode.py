"""reembed_vs_encode, reembed_vs_best_encode: end-to-end ``reembed()`` against bare ``SentenceTransformer.encode``.

Same texts (the ``documents`` rows, SciFact sentences), same model (the ``minilm-256`` space:
MiniLM-L6 truncated to 256 dims; fp16 on CUDA).

First a sweep of bare shapes, each a way a user could feed the model these texts, for model
batch sizes 8, 16, 32, 64 and 128:

* ``all@B``: one ``model.encode(all_texts, batch_size=B)``, which sorts the whole list by length;
* ``chunks@B``: one ``encode`` per B rows in key order (what a naive streaming loop does);
* ``windows@B``: one ``encode`` per 16 batches (16 x B rows in key order), which sorts each window
  by length: the engine's shape before issue 18 (its read window was 16 model batches), with the
  engine taken out. Where 16 batches hold every text it is ``all@B`` and is not run twice.

Runs are round-robin over the shapes (the starting shape rotates), n runs each; the fastest
median is the best bare shape. Then, interleaved the same way: the best bare shape again,
``reembed()`` with the space as configured (the engine's default batch), ``reembed()`` with
batch 64 given explicitly (the default before issue 18), and bare ``all@<default batch>`` for
``reembed_vs_encode``. ``reembed`` runs end to end (canary check, orphan delete, pending count,
stream, write) without the HNSW build, whose time is reported separately.

incremental_vs_full: after the last full pass, 1% of rows are edited and ``reembed`` runs again.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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
from embedding_pipeline.embeddings.reembed import read_window, reembed
from embedding_pipeline.providers import build_provider
from embedding_pipeline.spaces.bindings import build_index
from embedding_pipeline.spaces.model import space_table_name

SPACE = "minilm-256"
BATCHES = (8, 16, 32, 64, 128)
BEFORE_BATCH = 64  # the space's default batch size before issue 18
WINDOW_BATCHES = 16  # model batches per window in the windows@B shape


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bare_shapes(rows: int, batches=BATCHES) -> dict[str, tuple[int, int | None]]:
    """label -> (model batch, rows per encode call; None: one call over every text)."""
    out: dict[str, tuple[int, int | None]] = {}
    for b in batches:
        out[f"all@{b}"] = (b, None)
        out[f"chunks@{b}"] = (b, b)
        if WINDOW_BATCHES * b < rows:
            out[f"windows@{b}"] = (b, WINDOW_BATCHES * b)
    return out


def encode_shape(model, corpus: list[str], batch: int, step: int | None, device: str) -> float:
    """Rows/s of encoding ``corpus`` in calls of ``step`` texts (key order), model batch ``batch``."""
    step = step or len(corpus)
    t = time.perf_counter()
    for i in range(0, len(corpus), step):
        model.encode(corpus[i:i + step], batch_size=batch, normalize_embeddings=True, show_progress_bar=False)
    _sync(device)
    return len(corpus) / (time.perf_counter() - t)


def interleaved(contenders: dict[str, Callable[[], float]], repeats: int, log, what: str) -> dict[str, list[float]]:
    """Run every contender ``repeats`` times, round-robin, the first one rotating each round, so
    every contender sees the machine's load swings alike; rows/s per contender."""
    names = list(contenders)
    runs: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            runs[n].append(contenders[n]())
        log(f"{what} round {r + 1}/{repeats}: " + ", ".join(f"{n} {runs[n][-1]:,.1f}" for n in names))
    return runs


def run(*, rows: int = 512, device: str = "cpu", repeats: int = 5, batches=BATCHES, incremental: bool = True,
        log=print) -> dict:
    cfg = bench_config(device=device)
    space_cfg = cfg.space(SPACE)
    provider = build_provider(SPACE, space_cfg)
    batch = provider.batch_size  # the engine's model batch for this space as configured (its default)
    model = provider.model
    provider.embed(texts(batch))  # load weights and warm the kernels before anything is timed
    # The space as it was configured before issue 18 (batch 64): its own provider, same weights.
    before_cfg = cfg.model_copy(update={"spaces": {**cfg.spaces, SPACE: space_cfg.model_copy(
        update={"batch_size": BEFORE_BATCH})}})
    before = build_provider(SPACE, before_cfg.space(SPACE))
    before.embed(texts(BEFORE_BATCH))
    d: dict = {"device": str(model.device), "model": space_cfg.model, "dims": space_cfg.dimensions, "batch": batch,
               "before_batch": BEFORE_BATCH, "read_window": read_window(provider),
               "before_read_window": read_window(before), "fp16": device.startswith("cuda"),
               "corpus": corpus_origin(), "rows": rows, "repeats": repeats, "load_before": load()}
    corpus = texts(rows)
    d["mean_chars"] = round(statistics.mean(map(len, corpus)), 1)

    # 1. Bare shapes.
    shapes = bare_shapes(rows, batches)
    t = time.perf_counter()
    sweep = interleaved({label: (lambda b=b, s=s: encode_shape(model, corpus, b, s, device))
                         for label, (b, s) in shapes.items()}, repeats, log, "bare shapes")
    d["shapes"] = {label: {"batch": b, "rows_per_call": s or rows, **summary(sweep[label], 1)}
                   for label, (b, s) in shapes.items()}
    d["sweep_seconds"] = round(time.perf_counter() - t, 1)
    best = max(shapes, key=lambda label: statistics.median(sweep[label]))
    d["best_shape"] = best
    d["load_after_sweep"] = load()

    with postgres("encode") as db:
        with db.connect() as conn:
            prepare(conn, cfg, rows, [SPACE], lambda s: provider)
        tbl = sql.Identifier(cfg.project_schema, space_table_name(SOURCE, SPACE))
        full_seconds: list[float] = []

        def engine(c, p, seconds: list[float] | None = None) -> float:
            with db.connect() as conn:
                conn.execute(sql.SQL("TRUNCATE {}").format(tbl))
                conn.commit()
            stats = reembed(db, c, SOURCE, SPACE, p, build_hnsw=False)
            assert stats.embedded == rows, stats.to_json()
            if seconds is not None:
                seconds.append(stats.seconds)
            return stats.embedded / stats.seconds

        # 2. The engine against the best bare shape, today's default and the one before, interleaved.
        plain = f"all@{batch}"
        contenders = {"bare_best": lambda: encode_shape(model, corpus, *shapes[best], device),
                      "reembed": lambda: engine(cfg, provider, full_seconds),
                      "reembed_before": lambda: engine(before_cfg, before)}
        if plain != best:
            contenders["bare_all"] = lambda: encode_shape(model, corpus, batch, None, device)
        t = time.perf_counter()
        runs = interleaved(contenders, repeats, log, "engine vs bare")
        d["ratio_seconds"] = round(time.perf_counter() - t, 1)
        runs.setdefault("bare_all", runs["bare_best"])
        for name, values in runs.items():
            d[f"{name}_rows_per_s"] = summary(values, 1)
        med = {name: statistics.median(values) for name, values in runs.items()}
        with db.connect() as conn:
            t = time.perf_counter()
            build_index(conn, cfg.space(SPACE).on(SOURCE))
            d["hnsw_build_seconds"] = round(time.perf_counter() - t, 2)
        result = {"reembed_vs_encode": round(med["reembed"] / med["bare_all"], 3),
                  "reembed_vs_best_encode": round(med["reembed"] / med["bare_best"], 3)}
        d["reembed_before_vs_best_encode"] = round(med["reembed_before"] / med["bare_best"], 3)
        d["reembed_vs_reembed_before"] = round(med["reembed"] / med["reembed_before"], 3)
        if incremental:
            with db.connect() as conn:
                changed = touch_rows(conn, 0.01)
            stats = reembed(db, cfg, SOURCE, SPACE, provider, build_hnsw=False)
            d["incremental"] = {"changed": changed, "embedded": stats.embedded, "seconds": round(stats.seconds, 3),
                                "full_seconds_median": round(statistics.median(full_seconds), 3),
                                "note": "a scheduled pass that finds the edits by content hash; HNSW index present"}
            result["incremental_vs_full"] = round(stats.seconds / statistics.median(full_seconds), 4)
            # The change-capture path: the same edit again, this time handed over as ids.
            with db.connect() as conn:
                touch_rows(conn, 0.01)
            ids = [row_id(i) for i in range(0, rows, 100)]
            stats = reembed(db, cfg, SOURCE, SPACE, provider, ids=ids, build_hnsw=False)
            d["incremental_by_ids"] = {"changed": len(ids), "embedded": stats.embedded,
                                       "seconds": round(stats.seconds, 3),
                                       "ratio": round(stats.seconds / statistics.median(full_seconds), 4)}
    provider.close()
    before.close()
    d["load_after"] = load()
    return {**result, "details": {"reembed_vs_encode": d}}
