"""Shard scaling: 1, 2, 4 and 8 concurrent re-embed workers against an I/O-bound loopback server.

The provider is the deterministic embeddings server of the tests (embedding_pipeline_tests/support/
embedding_server.py): a fixed sleep per request (64 texts, 200 ms), so on 2 CPU cores the curve measures
the orchestration and database overhead of more workers, not the machine's compute. Each worker is its
own interpreter running ``reembed()`` over its own shard; workers import, connect and send one warm-up
request first, then start together at a common instant, so interpreter start-up (paid once by a
long-lived worker) is not counted.

Shards are the engine's own: one source table, ``sources.<name>.shards: N``, worker k running
``reembed(shard=(k, N))`` (its rows by id hash, its own lock, no index build), ``concurrency.db_writers``
set to N so no worker waits for a database writer slot. N = 1 is a whole-table run.

efficiency(N) = rows/s(N) ÷ (N × rows/s(1)); ``shard_efficiency_8`` is efficiency at N = 8 (goal ≥ 0.8).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.common import REPO, SOURCE, load, make_source, postgres

SPACE = "det"
BATCH = 64  # texts per request
DELAY = 0.2  # seconds per request


def _config(base_url: str, shards: int) -> dict:
    src = {SOURCE: {"schema": "public", "table": SOURCE, "id_column": "id", "text_column": "content",
                    "active_space": SPACE, "spaces": [SPACE], "shards": shards}}
    return {"project_schema": "embedding_pipeline", "sources": src, "concurrency": {"db_writers": shards},
            "spaces": {SPACE: {"transport": "openai", "model": "det-64", "base_url": base_url, "dimensions": 64,
                               "dimensions_mode": "never", "api_key_env": "DET_API_KEY", "batch_size": BATCH,
                               "concurrency": 1, "timeout_s": 60}}}


def child_shard(url: str, config: str, k: int, n: int, start_at: float) -> dict:
    """In a worker: import, connect and register first; at ``start_at`` re-embed shard k of n."""
    from embedding_pipeline.config import load_config
    from embedding_pipeline.db.connection import Database
    from embedding_pipeline.embeddings.reembed import reembed
    from embedding_pipeline.providers import build_provider

    cfg = load_config(Path(config))
    db = Database(url=url, embedded=False, home=Path("/tmp"))
    provider = build_provider(SPACE, cfg.space(SPACE))
    # A long-lived worker has its HTTP client built and the openai package's lazy modules imported
    # (~0.5 s of CPU per process, measured: 8 cold workers spent 4.5 s on 2 cores in their first request).
    provider.embed_documents(["warm-up"])
    time.sleep(max(0.0, start_at - time.time()))
    t = time.time()
    shard = (k, n) if n > 1 else None
    stats = reembed(db, cfg, SOURCE, SPACE, provider, build_hnsw=False, shard=shard)
    return {"rows": stats.embedded, "started": t, "ended": time.time()}


def _prepare(db, cfg_path: Path, rows: int) -> None:
    """A fresh project schema and source table, registered with the space, nothing embedded."""
    from embedding_pipeline.config import load_config
    from embedding_pipeline.db.schema import ensure_schema
    from embedding_pipeline.embeddings.setup import prepare_source
    from embedding_pipeline.providers import build_provider

    cfg = load_config(cfg_path)
    provider = build_provider(SPACE, cfg.space(SPACE))
    with db.connect() as conn:
        ensure_schema(conn, cfg.project_schema)
        conn.execute("DROP SCHEMA IF EXISTS embedding_pipeline CASCADE")
        conn.commit()
        ensure_schema(conn, cfg.project_schema)
        conn.commit()
        make_source(conn, rows, legacy_column=False)
        conn.commit()
        prepare_source(conn, cfg, SOURCE, lambda _: provider, spaces=[SPACE])
    provider.close()


def run(*, workers=(1, 2, 4, 8), rows: int = 8 * 64 * 24, log=print) -> dict:
    from embedding_pipeline_tests.support.embedding_server import EmbeddingServer

    d: dict = {"batch": BATCH, "delay_s": DELAY, "rows": rows, "load_before": load(),
               "shards_as": "reembed(shard=(k, n)) over one source table"}
    points = []
    with postgres("shards") as db, EmbeddingServer(dimensions=64, delay=DELAY) as server:
        work = Path(db.home)
        for n in workers:
            cfg_path = work / f"shards_{n}.yaml"
            cfg_path.write_text(yaml.safe_dump(_config(server.url, n)))
            _prepare(db, cfg_path, rows)
            start_at = time.time() + 8 + 2 * n  # time for every interpreter to import and connect
            procs = [subprocess.Popen([sys.executable, "-m", "bench.child", "bench.shards:child_shard",
                                       json.dumps({"url": db.url, "config": str(cfg_path), "k": k, "n": n,
                                                   "start_at": start_at})],
                                      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for k in range(n)]
            results = []
            for p in procs:
                out, err = p.communicate(timeout=900)
                lines = [ln for ln in out.splitlines() if ln.startswith("BENCH_RESULT ")]
                if p.returncode or not lines:
                    raise RuntimeError(f"shard worker failed ({p.returncode}): {err[-2000:]}")
                results.append(json.loads(lines[-1].removeprefix("BENCH_RESULT ")))
            if any(r["started"] > start_at + 2 for r in results):
                log(f"shards: N={n}: a worker started {max(r['started'] for r in results) - start_at:.1f}s late")
            done = sum(r["rows"] for r in results)
            seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
            point = {"workers": n, "rows": done, "seconds": round(seconds, 2), "rows_per_s": round(done / seconds, 1),
                     "late_start_s": round(max(r["started"] for r in results) - start_at, 2)}
            points.append(point)
            log(f"shards: {point}")
    base = points[0]["rows_per_s"]
    for p in points:
        p["efficiency"] = round(p["rows_per_s"] / (p["workers"] * base), 3)
    d["points"] = points
    d["load_after"] = load()
    eff8 = next((p["efficiency"] for p in points if p["workers"] == 8), None)
    return {"shard_efficiency_8": eff8, "details": {"shards": d}}
