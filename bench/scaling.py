"""Scaling shape and memory: full re-embed passes at 10k, 100k and 1M rows, each in its own process.

The provider is ``PrecomputedProvider`` (vectors from a fixed pool; no model: a 1M-row pass
with a real model is hours on CPU), so this measures the engine's read / validate / write path.
Each pass runs ``reembed()`` in a fresh interpreter whose VmHWM is its peak RSS (client side;
the PostgreSQL server's memory is its own). A pass longer than its time box is stopped there
(the engine is built to be killed: every committed batch stays) and reported with the rows it
reached, so a slow engine still yields a rate and a memory high-water mark. ``make bench`` runs
every pass to the end (issue 18: the 1M-row RSS figure must cover the whole pass); only
``--quick`` sets a box.

incremental_vs_full (precomputed variant): after the 100k pass, 1% of the rows are edited and a
second pass picks up only those.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from psycopg import sql

from bench.common import (
    PRECOMPUTED,
    SOURCE,
    PrecomputedProvider,
    bench_config,
    load,
    postgres,
    prepare,
    run_child,
    touch_rows,
)

BATCH = 2000


def child_pass(url: str, batch: int, time_box: float | None = None) -> dict:
    """In the child: one reembed() pass; stop at the time box and report the rows committed by then."""
    from embedding_pipeline.db.connection import Database
    from embedding_pipeline.embeddings.reembed import reembed
    from embedding_pipeline.spaces.model import space_table_name

    cfg = bench_config()
    db = Database(url=url, embedded=False, home=Path("/tmp"))
    provider = PrecomputedProvider(PRECOMPUTED, cfg.space(PRECOMPUTED))
    out: dict = {}

    def work():
        try:
            out["stats"] = reembed(db, cfg, SOURCE, PRECOMPUTED, provider, batch_size=batch, build_hnsw=False)
        except BaseException as e:  # reported to the parent
            out["error"] = repr(e)

    t = time.perf_counter()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(time_box)
    elapsed = time.perf_counter() - t
    if "error" in out:
        raise RuntimeError(out["error"])
    if "stats" in out:
        s = out["stats"]
        return {"rows": s.embedded, "todo": s.todo, "seconds": round(s.seconds, 3),
                "rows_per_s": round(s.embedded / s.seconds, 1), "time_boxed": False}
    tbl = sql.Identifier(cfg.project_schema, space_table_name(SOURCE, PRECOMPUTED))
    with db.connect() as conn:
        done = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(tbl)).fetchone()[0]
    # child.py exits with os._exit, so the daemon thread and its transaction simply end here.
    return {"rows": done, "seconds": round(elapsed, 3), "rows_per_s": round(done / elapsed, 1), "time_boxed": True}


def child_idle() -> dict:
    """The same imports with no work: the floor every pass's RSS stands on."""
    import embedding_pipeline.embeddings.reembed  # noqa: F401

    return {"rows": 0}


def _reset(db, cfg) -> None:
    from embedding_pipeline.spaces.model import space_table_name

    with db.connect() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(
            sql.Identifier(cfg.project_schema, space_table_name(SOURCE, PRECOMPUTED))))
        conn.commit()


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [p["source_rows"] for p in points]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(rows, [p["rows_per_s"] for p in points], "o-")
    a.set(xscale="log", xlabel="source rows", ylabel="rows/s", title="write path throughput (precomputed vectors)")
    b.plot(rows, [p["peak_rss_mib"] for p in points], "o-", color="tab:red")
    b.set(xscale="log", xlabel="source rows", ylabel="peak RSS (MiB)", title="client peak RSS per pass", ylim=(0, None))
    for p in points:
        if p["time_boxed"]:
            a.annotate(f"time-boxed at {p['rows']:,} rows", (p["source_rows"], p["rows_per_s"]), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(*, sizes=(10_000, 100_000, 1_000_000), incremental_size: int = 100_000, time_box: float | None = None,
        plot_path: Path | None = None, log=print) -> dict:
    cfg = bench_config()
    provider = PrecomputedProvider(PRECOMPUTED, cfg.space(PRECOMPUTED))
    d: dict = {"batch": BATCH, "time_box_s": time_box, "load_before": load(), "provider": "precomputed",
               "idle_rss_mib": round(run_child("bench.scaling:child_idle", {})["peak_rss_kib"]
                                     / 1024, 1)}
    points, incremental = [], None
    with postgres("scaling") as db:
        for n in sizes:
            with db.connect() as conn:
                prepare(conn, cfg, n, [PRECOMPUTED], lambda s: provider)
            _reset(db, cfg)
            res = run_child("bench.scaling:child_pass",
                            {"url": db.url, "batch": BATCH, "time_box": time_box})
            point = {"source_rows": n, **res, "peak_rss_mib": round(res["peak_rss_kib"] / 1024, 1)}
            points.append(point)
            log(f"scaling: {n:,} rows: {point}")
            if n == incremental_size and not res["time_boxed"]:
                with db.connect() as conn:
                    changed = touch_rows(conn, 0.01)
                inc = run_child("bench.scaling:child_pass", {"url": db.url, "batch": BATCH})
                incremental = {"source_rows": n, "changed": changed, "full_seconds": res["seconds"],
                               "incremental_seconds": inc["seconds"], "incremental_rows": inc["rows"],
                               "ratio": round(inc["seconds"] / res["seconds"], 4)}
                log(f"scaling: incremental {incremental}")
    d["points"] = points
    d["incremental_precomputed"] = incremental
    d["load_after"] = load()
    if plot_path is not None and len(points) > 1:
        plot(points, plot_path)
        d["plot"] = str(plot_path)
    by_size = {p["source_rows"]: p for p in points}
    small, big = min(by_size), max(by_size)
    ratio = round(by_size[big]["peak_rss_kib"] / by_size[small]["peak_rss_kib"], 3) if big != small else None
    d["rss_sizes"] = [small, big]
    return {"rss_1m_vs_10k": ratio, "details": {"scaling": d}}
