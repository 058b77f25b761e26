"""Peer: LangChain's PGVector (langchain-postgres) with OpenAIEmbeddings. Runs inside its own venv.

Usage: python peer_langchain.py '{"db_url": ..., "sqlalchemy_url": ..., "base_url": ..., "model": ...}'
Reads public.documents as an application would, then one `add_texts` with the rows' ids.
OpenAIEmbeddings sends `chunk_size` texts per request (its default 1000, or the "chunk_size" argument).
Prints one JSON line.
"""

import json
import sys
import time
from importlib.metadata import version

import psycopg
from langchain_openai import OpenAIEmbeddings
from langchain_postgres import PGVector


def main(a: dict) -> dict:
    emb = OpenAIEmbeddings(base_url=a["base_url"], api_key="not-needed", model=a["model"],
                           check_embedding_ctx_length=False, chunk_size=a.get("chunk_size", 1000))
    store = PGVector(embeddings=emb, collection_name="bench", connection=a["sqlalchemy_url"], use_jsonb=True)
    t = time.perf_counter()
    with psycopg.connect(a["db_url"]) as c:
        rows = c.execute("SELECT id, content FROM public.documents WHERE deleted_at IS NULL ORDER BY id").fetchall()
    store.add_texts([r[1] for r in rows], ids=[r[0] for r in rows])
    elapsed = time.perf_counter() - t
    with psycopg.connect(a["db_url"]) as c:
        stored = c.execute("SELECT count(*) FROM langchain_pg_embedding").fetchone()[0]
    return {"rows": stored, "seconds": round(elapsed, 3), "rows_per_s": round(stored / elapsed, 2),
            "settings": f"OpenAIEmbeddings chunk_size {emb.chunk_size}" + (" (default)" if emb.chunk_size == 1000 else "")
                        + ", check_embedding_ctx_length=False",
            "version": version("langchain-postgres")}


if __name__ == "__main__":
    print("BENCH_RESULT " + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
