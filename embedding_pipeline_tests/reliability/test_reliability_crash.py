"""kill -9 of a re-embed run at chosen points, then a resumed run: exact, no duplicates, one version.

Each trial is a child process (forked from a server that paid the torch imports once) running
``reembed`` with instrumentation: when it reaches the trial's phase in the trial's batch it prints
a marker line and parks, and the test kills it with SIGKILL, then resumes in-process. The phases
(what the database holds open at the moment of the kill):

- ``encode``: inside the provider call of batch N (the model has run, the engine has not yet
  received the vectors); earlier batches may still be queued for the writer.
- ``copy``: the writer's ``COPY ... FROM STDIN`` of batch N is open on the server with rows sent.
- ``commit``: batch N's COPY into the space table and its prune of rows no longer eligible have run
  inside its transaction; COMMIT is not sent.
- ``index``: every batch is committed and ``CREATE INDEX ... USING hnsw`` is executing on the
  server (held there by a lock the parent holds, so the kill provably lands mid-statement).

The trial points come from a seeded RNG, so a failure reproduces with the same phase and batch.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from psycopg import sql

from embedding_pipeline.embeddings.coverage import space_counts
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.spaces.model import index_name, space_table_name
from embedding_pipeline.spaces.source import inspect_source
from embedding_pipeline_tests.support.reliability_report import record

SPACE, ROWS, BATCH = "minilm-256", 200, 16
NBATCHES = -(-ROWS // BATCH)
SEED = 20240611


def _trials() -> list[tuple[str, int]]:
    rng = random.Random(SEED)
    phases = ["encode"] * 3 + ["copy"] * 3 + ["commit"] * 2 + ["index"] * 2
    rng.shuffle(phases)
    return [(p, 0 if p == "index" else rng.randint(1, NBATCHES)) for p in phases]


TRIALS = _trials()

# A fork server: the heavy imports (torch, transformers) are paid once; each trial is a fresh
# fork that loads the model, runs the instrumented engine and is killed. No torch op runs in
# the server before forking, so no thread pool is copied into a child half-initialised.
ZYGOTE = textwrap.dedent("""
    import json, os, sys, time, traceback
    import psycopg
    from psycopg import sql
    import sentence_transformers, torch  # noqa: F401 - imported once, before forking
    from embedding_pipeline.embeddings import reembed as engine
    from embedding_pipeline.spaces.canaries import CANARY_TEXTS
    from embedding_pipeline.config import load_config
    from embedding_pipeline.db.connection import Database
    from embedding_pipeline.providers import build_provider

    def trial(phase, target, batch_size):
        # One intra-op thread: on a shared, busy machine OpenMP spin-waits make two threads ~5x slower.
        torch.set_num_threads(1)
        state = {"encoded": 0, "written": 0, "rows": 0}

        def mark(name, n):
            if name == phase and n == target:
                print(f"MARK {name} {n}", flush=True)
                time.sleep(300)  # parked until the parent's kill -9

        cfg = load_config()
        cfg = cfg.model_copy(update={"sources": {"documents": cfg.sources["documents"]}})
        provider = build_provider("minilm-256", cfg.space("minilm-256"))
        embed = provider._embed
        def encode(texts, query):
            if list(texts) == list(CANARY_TEXTS):  # the validator's canary check, not a batch
                return embed(texts, query=query)
            state["encoded"] += 1
            vectors = embed(texts, query=query)
            mark("encode", state["encoded"])
            return vectors
        provider._embed = encode

        write = engine._Writer._write
        def counted_write(self, *batch):
            state["written"] += 1
            state["rows"] = 0
            return write(self, *batch)
        engine._Writer._write = counted_write

        write_row = psycopg.Copy.write_row
        def copy_row(self, row):
            write_row(self, row)
            state["rows"] += 1
            if state["rows"] == 3:
                mark("copy", state["written"])
        psycopg.Copy.write_row = copy_row

        execute = psycopg.Cursor.execute
        def traced(self, query, params=None, **kw):
            text = query.as_string(self.connection) if isinstance(query, sql.Composable) else str(query)
            if phase == "index" and text.startswith("CREATE INDEX"):
                print("MARK index 0", flush=True)
            result = execute(self, query, params, **kw)
            if text.startswith("DELETE FROM") and "t.source_id = ANY" in text:  # the batch's last statement
                mark("commit", state["written"])
            return result
        psycopg.Cursor.execute = traced

        engine.reembed(Database.resolve(), cfg, "documents", "minilm-256", provider, batch_size=batch_size)

    for line in sys.stdin:
        job = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.environ.update(job["env"])
                trial(job["phase"], job["target"], job["batch"])
                print("FINISHED", flush=True)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"PID {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"EXIT {pid} {status}", flush=True)
""")


class ForkServer:
    def __init__(self, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=dict(os.environ))
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.decode().strip())
        self.lines.put("EOF")

    def next_line(self, deadline: float) -> str:
        try:
            return self.lines.get(timeout=max(deadline - time.monotonic(), 0.1))
        except queue.Empty:
            return "TIMEOUT"

    def start(self, phase: str, target: int, batch: int) -> tuple[int, str]:
        """Fork a trial; return its pid and the marker line (or the line that ended the wait)."""
        env = {k: os.environ[k] for k in ("EMBEDDING_PIPELINE_DATABASE_URL", "EMBEDDING_PIPELINE_CONFIG",
                                           "EMBEDDING_PIPELINE_HOME")}
        self.proc.stdin.write((json.dumps({"phase": phase, "target": target, "batch": batch, "env": env}) + "\n")
                              .encode())
        self.proc.stdin.flush()
        pid, marker, deadline = None, None, time.monotonic() + 240
        while pid is None or marker is None:
            line = self.next_line(deadline)
            if line.startswith("PID "):
                pid = int(line.split()[1])
            elif line.startswith("MARK "):
                marker = line
            elif line.startswith(("EXIT", "FINISHED", "EOF", "TIMEOUT")):
                if pid is not None and line != "EOF" and not line.startswith("EXIT"):
                    os.kill(pid, signal.SIGKILL)
                    self.reap(pid)
                raise AssertionError(f"trial never reached its kill point ({line}): {self.tail()}")
        return pid, marker

    def reap(self, pid: int) -> None:
        deadline = time.monotonic() + 60
        while (line := self.next_line(deadline)) != "TIMEOUT":
            if line.startswith(f"EXIT {pid} "):
                return
        raise AssertionError(f"fork server did not reap {pid}: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_bytes().decode(errors="replace")[-3000:]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("crash") / "fork_server.log")
    yield server
    server.close()


@pytest.fixture(scope="module")
def provider(provider_cache, packaged_config):
    return provider_cache.get(packaged_config, SPACE)


@pytest.fixture(scope="module")
def reference(provider):
    """The model's vector per text, computed once: every trial's table holds the same texts."""
    cache: dict[str, np.ndarray] = {}

    def vectors(texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if new:
            cache.update(zip(new, provider.embed_documents(new)))
        return np.vstack([cache[t] for t in texts])
    return vectors


@pytest.fixture
def source(prepared_source):
    return prepared_source([SPACE], ROWS).cfg


def _poll(conn, query, params, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(query, params).fetchone()
        if row and row[0]:
            return row[0]
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {query}")


def _index_state(conn, cfg) -> bool | None:
    """None when the HNSW index is absent, else pg_index.indisvalid."""
    name = sql.Identifier(cfg.project_schema, index_name(space_table_name("documents", SPACE))).as_string(conn)
    row = conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (name,)).fetchone()
    return None if row is None else row[0]


@pytest.mark.parametrize("trial, phase, batch", [(i + 1, p, b) for i, (p, b) in enumerate(TRIALS)],
                         ids=[f"t{i + 1:02d}-{p}-b{b}" for i, (p, b) in enumerate(TRIALS)])
def test_kill_9_then_resume_is_exact(db, source, provider, reference, fork_server, trial, phase, batch):
    """Whatever instant the process dies at, the next run ends with every row once, in one version, indexed."""
    cfg = source
    table = sql.Identifier(cfg.project_schema, space_table_name("documents", SPACE))
    with db.connect(autocommit=True) as watch, db.connect() as locker:
        mine = {r[0] for r in watch.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")}
        if phase == "index":
            # Writes (ROW EXCLUSIVE) pass; CREATE INDEX (SHARE) waits here until after the kill.
            locker.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(table))
        pid, _ = fork_server.start(phase, batch, BATCH)
        try:
            if phase == "index":
                _poll(watch, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                             "AND wait_event_type = 'Lock' AND query LIKE 'CREATE INDEX%%'", ())
            children = {r[0] for r in watch.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")} - mine
        finally:
            os.kill(pid, signal.SIGKILL)
            fork_server.reap(pid)
        locker.rollback()
        # The server ends the dead client's sessions (and their advisory lock) when it sees the socket close.
        _poll(watch, "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s))", (list(children),))
        partial = watch.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
        index_before = _index_state(watch, cfg)

    assert partial % BATCH == 0 or partial == ROWS, "a batch was committed in part"
    if phase == "encode":
        assert partial <= (batch - 1) * BATCH
    elif phase in ("copy", "commit"):
        assert partial == (batch - 1) * BATCH  # batches before N committed, batch N not at all
    else:
        assert partial == ROWS and index_before is None  # the index build rolled back whole

    stats = reembed(db, cfg, "documents", SPACE, provider)
    assert stats.embedded == ROWS - partial
    with db.connect() as conn:
        rows = conn.execute(sql.SQL("SELECT e.source_id, e.model_version, e.embedding, d.content FROM {} e "
                                    "JOIN documents d ON d.id = e.source_id ORDER BY 1").format(table)).fetchall()
        counts = space_counts(conn, cfg, inspect_source(conn, "documents", cfg.source("documents")), SPACE)
        index_after = _index_state(conn, cfg)
    assert len(rows) == len({r[0] for r in rows}) == ROWS
    assert {r[1] for r in rows} == {cfg.space(SPACE).model_version}
    assert (counts.covered, counts.stale, counts.orphans) == (ROWS, 0, 0)
    assert index_after is True
    expected = reference([r[3] for r in rows])
    cos = np.sum(expected * np.vstack([r[2].to_numpy() for r in rows]), axis=1)
    assert cos.min() >= 0.999, "a stored vector does not belong to its row"
    record(f"crash/kill9-t{trial:02d}-{phase}", phase=phase, batch=batch, committed_before_kill=partial,
           reembedded_on_resume=stats.embedded, final_rows=len(rows), duplicates=len(rows) - len({r[0] for r in rows}),
           versions=len({r[1] for r in rows}), index_valid=index_after, min_cosine=round(float(cos.min()), 5))
