"""Application writes, a second run and a cutover racing the re-embed engine: the end state is exact.

The application threads insert, edit, blank, soft-delete, restore and delete rows in bounded
loops (seeded, so a failure replays the same operations) while the backfill runs; a final pass
afterwards must leave full coverage, nothing stale and no orphans.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import numpy as np
import pytest
from psycopg import sql

from embedding_pipeline.cutover.switch import cutover
from embedding_pipeline.embeddings.coverage import space_counts
from embedding_pipeline.embeddings.reembed import RunInProgress, reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.providers import build_provider
from embedding_pipeline.read_path.install import view_name
from embedding_pipeline.read_path.search import search
from embedding_pipeline.spaces.canaries import CANARY_TEXTS
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline.spaces.source import inspect_source
from embedding_pipeline_tests.support.configs import TEST_CONFIG
from embedding_pipeline_tests.support.reliability_report import record
from embedding_pipeline_tests.support.sources import TOPICS

SPACE, LEGACY, ROWS = "minilm-256", "minilm", 160
QUERY = "how long should pasta boil in salted water"


@pytest.fixture(scope="module")
def pool():
    """Separate model instances per concurrent user: one fast tokenizer must not serve two threads at once."""
    from embedding_pipeline.config import load_config

    cfg = load_config(TEST_CONFIG, env={})
    providers = {"a": build_provider(SPACE, cfg.space(SPACE)), "b": build_provider(SPACE, cfg.space(SPACE)),
                 LEGACY: build_provider(LEGACY, cfg.space(LEGACY))}
    yield providers
    for p in providers.values():
        p.close()


@pytest.fixture
def cfg(prepared_source):
    return prepared_source([SPACE], ROWS).cfg


class App:
    """Bounded loops of application writes on their own connections; errors are kept, not raised."""

    OPS = ["insert", "update", "update", "blank", "soft_delete", "restore", "delete"]

    def __init__(self, db, threads: int = 2, max_ops: int = 400, pause: float = 0.01):
        self.db, self.max_ops, self.pause = db, max_ops, pause
        self.stop, self.running = threading.Event(), threading.Event()
        self.counts: Counter = Counter()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(seed,)) for seed in range(threads)]

    def _op(self, conn, rng, seed, i):
        op = rng.choice(self.OPS)
        target = f"doc{rng.randrange(ROWS):05d}"
        text = f"{rng.choice(TOPICS)} Edited by the app, round {i} of writer {seed}."
        if op == "insert":
            conn.execute("INSERT INTO documents (id, content) VALUES (%s, %s)", (f"app{seed}-{i:04d}", text))
        elif op == "update":
            conn.execute("UPDATE documents SET content = %s, updated_at = now() WHERE id = %s", (text, target))
        elif op == "blank":
            conn.execute("UPDATE documents SET content = %s WHERE id = %s", (rng.choice([None, "  "]), target))
        elif op == "soft_delete":
            conn.execute("UPDATE documents SET deleted_at = now() WHERE id = %s", (target,))
        elif op == "restore":
            conn.execute("UPDATE documents SET deleted_at = NULL WHERE id = %s", (target,))
        else:
            conn.execute("DELETE FROM documents WHERE id = %s", (target,))
        return op

    def _loop(self, seed):
        rng = random.Random(1000 + seed)
        try:
            with self.db.connect(autocommit=True) as conn:
                for i in range(self.max_ops):
                    if self.stop.is_set():
                        return
                    op = self._op(conn, rng, seed, i)
                    with self.lock:
                        self.counts[op] += 1
                        self.counts["during_engine"] += self.running.is_set()
                    time.sleep(self.pause)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()

    def total(self) -> int:
        with self.lock:
            return sum(v for k, v in self.counts.items() if k != "during_engine")

    def wait_ops(self, n: int, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while self.total() < n and time.monotonic() < deadline and all(t.is_alive() for t in self.threads):
            time.sleep(0.02)


def _in_thread(fn, out: dict, key: str) -> threading.Thread:
    def run():
        try:
            out[key] = fn()
        except BaseException as e:  # noqa: BLE001 - asserted by the test
            out[key] = e
    t = threading.Thread(target=run)
    t.start()
    return t


def _assert_exact(db, cfg, provider) -> dict:
    """Coverage 100%, nothing stale, no orphans, one version, and each vector is its row's current text."""
    with db.connect() as conn:
        counts = space_counts(conn, cfg, inspect_source(conn, "documents", cfg.source("documents")), SPACE)
        table = sql.Identifier(cfg.project_schema, space_table_name("documents", SPACE))
        rows = conn.execute(sql.SQL("SELECT d.content, e.embedding FROM {} e JOIN documents d ON d.id = e.source_id")
                            .format(table)).fetchall()
    assert (counts.covered, counts.stored, counts.stale, counts.orphans) == (counts.eligible,) * 2 + (0, 0)
    assert counts.versions == {cfg.space(SPACE).model_version: counts.eligible}
    cos = np.sum(provider.embed_documents([r[0] for r in rows]) * np.vstack([r[1].to_numpy() for r in rows]), axis=1)
    assert cos.min() >= 0.999, "a stored vector is not its row's current text"
    return {"eligible": counts.eligible, "stored": counts.stored, "stale": counts.stale, "orphans": counts.orphans}


def test_backfill_under_application_writes_then_final_pass_is_exact(db, cfg, pool):
    """Edits and deletes landing mid-backfill leave stale or orphan rows only until the next pass, never after it."""
    out: dict = {}
    with App(db) as app:
        app.running.set()
        backfill = _in_thread(lambda: reembed(db, cfg, "documents", SPACE, pool["a"], batch_size=8), out, "backfill")
        backfill.join()
        app.running.clear()
        app.wait_ops(60)
    assert not app.errors, app.errors
    assert not isinstance(out["backfill"], BaseException), out["backfill"]
    assert app.counts["during_engine"] > 0, "no write overlapped the backfill"
    final = reembed(db, cfg, "documents", SPACE, pool["a"])
    end = _assert_exact(db, cfg, pool["a"])
    again = reembed(db, cfg, "documents", SPACE, pool["a"])
    assert (again.embedded, again.deleted) == (0, 0)
    record("concurrency/backfill-under-writes", app_ops=dict(app.counts), backfill_embedded=out["backfill"].embedded,
           final_pass_embedded=final.embedded, final_pass_deleted=final.deleted, **end)


def test_two_runs_of_one_partition_started_together(db, cfg, pool):
    """Two real runs race for one (source, space): exactly one writes, the other is refused with RunInProgress."""
    done = {"a": threading.Event(), "b": threading.Event()}

    def hold_until_other_done(name, other):
        # The first batch waits until the other run has returned, so the two provably overlap.
        inner = pool[name]._embed

        def embed(texts, query):
            if list(texts) != list(CANARY_TEXTS):
                done[other].wait(60)
            return inner(texts, query=query)
        pool[name]._embed = embed

    hold_until_other_done("a", "b")
    hold_until_other_done("b", "a")
    barrier, out = threading.Barrier(2), {}

    def run(name):
        def go():
            barrier.wait()
            try:
                return reembed(db, cfg, "documents", SPACE, pool[name], batch_size=16)
            finally:
                done[name].set()
        return go

    try:
        threads = [_in_thread(run(n), out, n) for n in ("a", "b")]
        for t in threads:
            t.join()
    finally:
        for name in ("a", "b"):
            del pool[name]._embed  # back to the class's method
    refused = [r for r in out.values() if isinstance(r, RunInProgress)]
    won = [r for r in out.values() if not isinstance(r, BaseException)]
    assert len(refused) == 1 and len(won) == 1, out
    assert "documents" in str(refused[0]) and SPACE in str(refused[0]) and "did nothing" in str(refused[0])
    assert won[0].embedded == ROWS
    end = _assert_exact(db, cfg, pool["a"])
    assert reembed(db, cfg, "documents", SPACE, pool["a"]).embedded == 0
    record("concurrency/two-runs-one-partition", runs=2, succeeded=len(won), refused_run_in_progress=len(refused),
           embedded=won[0].embedded, **end)


def test_cutover_during_writes_readers_see_one_space(db, cfg, pool):
    """Searches and view reads racing app writes and a forced cutover each see exactly one space, old then new."""
    with db.connect() as conn:
        rows = conn.execute("SELECT id, content FROM documents ORDER BY id").fetchall()
        vecs = pool[LEGACY].embed_documents([r[1] for r in rows])
        conn.cursor().executemany("UPDATE documents SET embedding = %s WHERE id = %s",
                                  [(v, r[0]) for v, r in zip(vecs, rows)])
        conn.commit()
        prepare_source(conn, cfg, "documents", lambda n: pool[LEGACY] if n == LEGACY else pool["a"],
                       spaces=[LEGACY, SPACE])
    readers_for = {LEGACY: pool[LEGACY], SPACE: pool["b"]}
    view = sql.Identifier(cfg.project_schema, view_name("documents"))
    seen: list[list[tuple[str, int, int]]] = [[], []]
    errors: list[BaseException] = []
    stop, out = threading.Event(), {}

    def reader(k):
        try:
            with db.connect(autocommit=True) as conn:
                while not stop.is_set():
                    r = search(conn, cfg, "documents", QUERY, k=5, provider_for=readers_for.__getitem__)
                    spaces, versions = conn.execute(sql.SQL(
                        "SELECT count(DISTINCT space), count(DISTINCT model_version) FROM {}").format(view)).fetchone()
                    seen[k].append((r.space, len(r.hits), spaces * 10 + versions))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    with App(db) as app:
        readers = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
        for t in readers:
            t.start()
        try:
            _in_thread(lambda: reembed(db, cfg, "documents", SPACE, pool["a"], batch_size=16), out, "backfill").join()
            before = app.total()
            flipped = cutover(db, cfg, "documents", SPACE, force=True, actor="reliability-test")
            cut_at = [len(s) for s in seen]
            deadline = time.monotonic() + 120
            while min(len(s) - c for s, c in zip(seen, cut_at)) < 5 and not errors and time.monotonic() < deadline:
                time.sleep(0.05)
            after = app.total()
        finally:
            stop.set()
            for t in readers:
                t.join()
    assert not errors and not app.errors, (errors, app.errors)
    assert not isinstance(out["backfill"], BaseException), out["backfill"]
    assert flipped["space"] == SPACE and flipped["previous_space"] == LEGACY
    assert before > 0 and after > before, "the cutover did not happen during application writes"
    for trace in seen:
        assert all(n == 5 and one == 11 for _, n, one in trace), "a read saw no rows, or two spaces at once"
        order = [s for s, _, _ in trace]
        flip = order.index(SPACE)
        assert set(order[:flip]) <= {LEGACY} and set(order[flip:]) == {SPACE}, "a reader went back to the old space"
    final = reembed(db, cfg, "documents", SPACE, pool["a"])
    end = _assert_exact(db, cfg, pool["a"])
    record("concurrency/cutover-during-writes", reads=sum(len(s) for s in seen),
           reads_old_space=sum(1 for s in seen for r in s if r[0] == LEGACY),
           reads_new_space=sum(1 for s in seen for r in s if r[0] == SPACE), mixed_reads=0,
           app_ops_before_cutover=before, app_ops_after_cutover=after - before,
           final_pass_embedded=final.embedded, final_pass_deleted=final.deleted, **end)
