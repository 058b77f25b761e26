"""Soak (not in CI, not in `make test`): backfill + change capture under a steady writer, with faults.

    python -m bench.soak --minutes 30 [--rate 5] [--rows 3000] [--out bench/work/soak.json]

One run, on its own embedded PostgreSQL in a temporary folder:

- a Honcho-like ``documents`` source (text ids, soft delete, a legacy vector column) of ``--rows``
  rows, change capture in trigger mode enabled before anything is embedded;
- a writer thread (this process) inserting, editing, soft-deleting, undeleting, blanking,
  hard-deleting and bulk-inserting rows at ``--rate`` operations a second for ``--minutes``;
- a worker process (``--worker``) running the real MiniLM-L6 truncated to 256-d in process (the
  ``minilm-256`` space, the smallest real one): a full ``reembed`` pass (the backfill first, then
  one every ``--pass-every`` seconds) and capture ``consume`` in between, retrying after any error
  as a scheduler would;
- faults in cycles (one per 5 minutes): provider errors (in a window, half of the model calls raise
  a transient ProviderError *before* the model runs: no vector is ever faked), kill -9 of the worker
  while it is embedding (the first one during the backfill) and a restart, and database restarts
  (``pg_ctl stop`` fast, then immediate, i.e. a crash with WAL recovery), the writer and the worker
  reconnecting on their own.

Then the writer stops, the worker drains (full passes and consumes until nothing is left) and the
end conditions are checked: the project's drift full check (coverage 100%, stale 0, orphans 0, one
model version, no failed check), independent SQL (no duplicate source_id, no eligible row without a
vector, no vector without an eligible row, one model_version, empty queue, no refused rows, a valid
HNSW index), stored vectors equal to a fresh embedding of a sample of rows (cosine >= 0.999), every
scheduled fault fired, and no worker or writer error that the faults do not explain. Exit 1 if any
fails. Results go to ``--out`` (JSON) and, unless ``--no-doc``, the summary table into
docs/reliability.md between its soak markers. Every process started here is ended here, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from bench.common import REPO, SOURCE, WORK, load, make_source, texts
from embedding_pipeline.config import PACKAGED_CONFIG, PipelineConfig, load_config
from embedding_pipeline.db import embedded as embedded_postgres
from embedding_pipeline.db.connection import (
    Database,
    ensure_extension,
    url_with_database,
)

SPACE = "minilm-256"
DATABASE = "soak"
INJECTED = "injected transient provider error (soak)"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-"
PROGRESS_S = 10.0
GRACE_S = 60.0  # errors up to this long after a fault ends are the fault's
DOC = REPO / "docs" / "reliability.md"
DOC_BEGIN, DOC_END = "<!-- soak:begin (written by bench/soak.py) -->", "<!-- soak:end -->"
# Writer operations and their weights; bulk_insert writes 25 rows in one transaction.
OPS = {"insert": 30, "edit": 30, "touch": 10, "soft_delete": 8, "hard_delete": 8, "undelete": 4, "blank": 3,
       "bulk_insert": 2}
BULK = 25


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def soak_config() -> PipelineConfig:
    """The packaged config: the ``documents`` source only, its one per-model space ``minilm-256``."""
    base = load_config(PACKAGED_CONFIG, env={})
    src = base.sources[SOURCE].model_copy(update={"spaces": [SPACE]})
    return base.model_copy(update={"sources": {SOURCE: src}})


# ------------------------------------------------------------------ the worker (a child process)


def _flaky_provider(cfg: PipelineConfig, flag: Path, rate: float, seed: int, on_inject, on_embedded):
    """The real model; while ``flag`` exists, a share ``rate`` of its calls raise before the model runs."""
    from embedding_pipeline.errors import ProviderError
    from embedding_pipeline.providers.sentence_transformers import (
        SentenceTransformersProvider,
    )
    from embedding_pipeline.spaces.canaries import CANARY_TEXTS

    rng = random.Random(seed)

    class FlakyProvider(SentenceTransformersProvider):
        def _embed_with_usage(self, texts, *, query, on_progress=None):
            if flag.exists() and rng.random() < rate:
                on_inject(len(texts))
                raise ProviderError(f"space {self.name!r}: {INJECTED}")
            out = super()._embed_with_usage(texts, query=query, on_progress=on_progress)
            on_embedded(len(texts), list(texts) == list(CANARY_TEXTS))
            return out

    return FlakyProvider(SPACE, cfg.space(SPACE).cfg)


def _error_kind(e: BaseException) -> str:
    """Which fault explains an error; 'unexpected' when none does (the soak then fails)."""
    from embedding_pipeline.embeddings.reembed import RunInProgress
    from embedding_pipeline.errors import DatabaseError, EmbeddingPipelineError

    if isinstance(e, EmbeddingPipelineError) and INJECTED in str(e):
        return "provider"
    if isinstance(e, RunInProgress):
        return "run_lock"  # the killed worker's session has not ended yet
    if isinstance(e, psycopg.OperationalError | DatabaseError):
        return "database"
    return "unexpected"


def worker(workdir: Path, pass_every: float, threads: int, seed: int, batch: int) -> int:
    import torch

    from embedding_pipeline.embeddings.capture import consume
    from embedding_pipeline.embeddings.reembed import reembed

    torch.set_num_threads(threads)  # a shared 2-core machine: spin-waiting OpenMP threads cost more than they give
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s %(message)s")
    parent = os.getppid()
    events = open(workdir / "events.jsonl", "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def event(kind: str, **fields) -> None:
        events.write(json.dumps({"t": time.time(), "pid": os.getpid(), "kind": kind, **fields}) + "\n")

    def state(s: str) -> None:
        tmp = workdir / "state.tmp"
        tmp.write_text(s)
        tmp.replace(workdir / "state")

    cfg = soak_config()
    provider = _flaky_provider(cfg, workdir / "provider_fault", 0.5, seed + os.getpid(),
                               lambda n: event("injected", rows=n), lambda n, canary: event("embedded", rows=n, canary=canary))
    db = Database.resolve()  # EMBEDDING_PIPELINE_DATABASE_URL: the parent's server, never one started here
    state("loading")
    provider.model  # noqa: B018 - loaded before the first pass, so "pass" in the state file means embedding
    drain = workdir / "drain"
    event("started")
    backoff, next_pass = 0.5, 0.0

    def full_pass():
        state("pass")
        s = reembed(db, cfg, SOURCE, SPACE, provider, batch_size=batch, progress_interval=PROGRESS_S)
        event("pass", todo=s.todo, embedded=s.embedded, deleted=s.deleted, index_built=s.index_built,
              seconds=round(s.seconds, 2))
        return s

    def consume_once():
        state("consume")
        r = consume(db, cfg, SOURCE, lambda _: provider, limit=batch, lock_wait_s=30)
        if r["claimed"] or r["deferred"]:
            done = r["spaces"].get(SPACE, {})
            event("consume", claimed=r["claimed"], embedded=done.get("embedded", 0), deleted=done.get("deleted", 0),
                  deferred=bool(r["deferred"]))
        return r

    while not drain.exists():
        if os.getppid() != parent:
            return 1  # the soak died: nothing is left to report to
        try:
            if time.monotonic() >= next_pass:
                full_pass()
                next_pass = time.monotonic() + pass_every
            r = consume_once()
            if not r["claimed"]:
                state("idle")
                time.sleep(0.5)
            backoff = 0.5
        except Exception as e:  # noqa: BLE001 - a scheduler retries any failure; _error_kind judges it
            kind = _error_kind(e)
            event("error", error=kind, type=type(e).__name__, message=str(e)[:300])
            if kind == "unexpected":
                traceback.print_exc()
            state("backoff")
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
    # Drain: the writer has stopped; full passes and consumes until one round finds nothing to do.
    event("drain")
    for _ in range(50):
        try:
            s = full_pass()
            claimed = 0
            while (r := consume_once())["claimed"]:
                claimed += r["claimed"]
            if s.todo == 0 and s.deleted == 0 and claimed == 0:
                event("drained")
                state("drained")
                return 0
        except Exception as e:  # noqa: BLE001 - as above: retried, judged by _error_kind
            event("error", error=_error_kind(e), type=type(e).__name__, message=str(e)[:300])
            traceback.print_exc()
            time.sleep(1)
    event("drain_failed")
    return 1


# ------------------------------------------------------------------ the writer (a thread here)


class Writer(threading.Thread):
    """The application: one operation per transaction (a bulk insert: 25 rows) at a steady rate."""

    def __init__(self, url: str, rate: float, seed: int, ids: list[str], corpus: list[str]):
        super().__init__(name="soak-writer", daemon=True)
        self.url, self.rate, self.rng = url, rate, random.Random(seed)
        self.ids, self.soft_deleted, self.corpus = list(ids), [], corpus
        self.next_text = len(ids)
        self.ops: Counter = Counter()
        self.failed: list[tuple[float, str]] = []  # (time, error kind)
        self.unexpected: list[str] = []
        self.stop = threading.Event()

    def _text(self) -> str:
        t = self.corpus[self.next_text % len(self.corpus)]
        self.next_text += 1
        return t

    def _new_id(self) -> str:
        return "".join(self.rng.choice(ALPHABET) for _ in range(21))  # nanoid-shaped, as Honcho's

    def _do(self, conn, op: str) -> None:
        tbl = sql.Identifier("public", SOURCE)
        pick = self.rng.choice(self.ids) if self.ids else None
        if op == "insert":
            i = self._new_id()
            conn.execute(sql.SQL("INSERT INTO {} (id, content) VALUES (%s, %s)").format(tbl), (i, self._text()))
            self.ids.append(i)
        elif op == "bulk_insert":
            rows = [(self._new_id(), self._text()) for _ in range(BULK)]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql.SQL("INSERT INTO {} (id, content) VALUES (%s, %s)").format(tbl), rows)
            self.ids.extend(i for i, _ in rows)
        elif op == "edit":
            conn.execute(sql.SQL("UPDATE {} SET content = %s, updated_at = now() WHERE id = %s").format(tbl),
                         (self._text(), pick))
        elif op == "touch":  # not a text change: capture must not queue it
            conn.execute(sql.SQL("UPDATE {} SET updated_at = now() WHERE id = %s").format(tbl), (pick,))
        elif op == "blank":  # an empty text is not eligible: its vector must go
            conn.execute(sql.SQL("UPDATE {} SET content = '', updated_at = now() WHERE id = %s").format(tbl), (pick,))
        elif op == "soft_delete":
            conn.execute(sql.SQL("UPDATE {} SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL").format(tbl),
                         (pick,))
            self.soft_deleted.append(pick)
        elif op == "undelete":
            if not self.soft_deleted:
                return
            i = self.soft_deleted.pop(self.rng.randrange(len(self.soft_deleted)))
            conn.execute(sql.SQL("UPDATE {} SET deleted_at = NULL WHERE id = %s").format(tbl), (i,))
        elif op == "hard_delete":
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(tbl), (pick,))
            self.ids.remove(pick)
        self.ops[op] += 1

    def run(self) -> None:
        names, weights = list(OPS), list(OPS.values())
        conn, due = None, time.monotonic()
        while not self.stop.is_set():
            op = self.rng.choices(names, weights)[0]
            try:
                if conn is None:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3)
                self._do(conn, op)
            except psycopg.OperationalError:
                self.failed.append((time.time(), op))
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.5)
            except Exception as e:  # noqa: BLE001 - any other error is a finding: reported, and the soak fails
                self.unexpected.append(f"{op}: {type(e).__name__}: {e}"[:300])
                if conn is not None:
                    conn.close()
                conn = None
            due = max(due + 1.0 / self.rate, time.monotonic() - 1.0)  # no burst to catch up after an outage
            self.stop.wait(max(0.0, due - time.monotonic()))
        if conn is not None:
            conn.close()


# ------------------------------------------------------------------ the soak (this process)


def _plan(seconds: float, cycles: int, rng: random.Random) -> list[tuple[float, str, dict]]:
    """The fault schedule: per cycle a provider-error window, a kill, a fast restart, another window, a kill,
    an immediate restart (plus the kill during the backfill, triggered by progress, not by time)."""
    plan = []
    c = seconds / cycles
    window = max(15.0, 0.06 * c)
    for k in range(cycles):
        t0 = k * c
        jitter = lambda: rng.uniform(-0.02, 0.02) * c
        plan += [(t0 + 0.10 * c, "provider_on", {}), (t0 + 0.10 * c + window, "provider_off", {}),
                 (t0 + 0.25 * c + jitter(), "kill", {}), (t0 + 0.40 * c + jitter(), "db_restart", {"mode": "fast"}),
                 (t0 + 0.55 * c, "provider_on", {}), (t0 + 0.55 * c + window, "provider_off", {}),
                 (t0 + 0.70 * c + jitter(), "kill", {}),
                 (t0 + 0.85 * c + jitter(), "db_restart", {"mode": "immediate"})]
    return sorted(plan, key=lambda p: p[0])


def _stop_immediate(home: Path) -> None:
    """``pg_ctl stop -m immediate``: the server quits without a checkpoint; the next start replays WAL (a crash)."""
    cmd = [str(embedded_postgres.bin_dir() / "pg_ctl"), "-w", "-D", str(embedded_postgres.data_dir(home)),
           "-m", "immediate", "stop"]
    if os.geteuid() == 0:  # as in embedded.stop(): the server runs as its own system user
        cmd = ["su", "pgserver", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in cmd)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


class Soak:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.workdir = Path(a.workdir).resolve()
        self.home = Path(tempfile.mkdtemp(prefix="ep-soak-"))
        self.proc: subprocess.Popen | None = None
        self.writer: Writer | None = None
        self.timeline: list[dict] = []
        self.events: list[dict] = []
        self._events_at = 0
        self.t0 = time.monotonic()
        self.worker_starts = 0
        self.unexpected_exits: list[int] = []

    # -- processes

    def start_worker(self) -> None:
        env = dict(os.environ, EMBEDDING_PIPELINE_DATABASE_URL=self.db.url, EMBEDDING_PIPELINE_HOME=str(self.home),
                   PYTHONUNBUFFERED="1", LC_ALL="C.UTF-8", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        (self.workdir / "state").write_text("loading")
        with open(self.workdir / "worker.log", "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.soak", "--worker", "--workdir", str(self.workdir),
                 "--pass-every", str(self.a.pass_every), "--threads", str(self.a.threads), "--seed", str(self.a.seed),
                 "--batch", str(self.a.batch)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # Ctrl-C reaches this process only; it ends the worker itself
        self.worker_starts += 1

    def kill_worker(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def worker_state(self) -> str:
        try:
            return (self.workdir / "state").read_text()
        except OSError:
            return "?"

    # -- bookkeeping

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def note(self, kind: str, **fields) -> None:
        self.timeline.append({"t": round(self.elapsed(), 1), "at": time.time(), "kind": kind, **fields})
        say(f"fault {kind}: " + ", ".join(f"{k} {v}" for k, v in fields.items()))

    def read_events(self) -> None:
        path = self.workdir / "events.jsonl"
        if not path.exists():
            return
        with path.open() as f:
            f.seek(self._events_at)
            for line in f:
                if line.endswith("\n"):
                    self.events.append(json.loads(line))
                    self._events_at += len(line.encode())

    def counts(self) -> dict:
        ev = self.events
        errors = Counter(e["error"] for e in ev if e["kind"] == "error")
        return {"passes": sum(e["kind"] == "pass" for e in ev),
                "pass_rows": sum(e.get("embedded", 0) for e in ev if e["kind"] == "pass"),
                "consumes": sum(e["kind"] == "consume" for e in ev),
                "consumed_entries": sum(e.get("claimed", 0) for e in ev if e["kind"] == "consume"),
                "consume_rows": sum(e.get("embedded", 0) for e in ev if e["kind"] == "consume"),
                "deleted_vectors": sum(e.get("deleted", 0) for e in ev if e["kind"] in ("pass", "consume")),
                "deferred": sum(bool(e.get("deferred")) for e in ev if e["kind"] == "consume"),
                "model_rows": sum(e["rows"] for e in ev if e["kind"] == "embedded" and not e.get("canary")),
                "canary_checks": sum(e["kind"] == "embedded" and bool(e.get("canary")) for e in ev),
                "injected_calls": sum(e["kind"] == "injected" for e in ev),
                "injected_rows": sum(e.get("rows", 0) for e in ev if e["kind"] == "injected"),
                "errors": dict(errors)}

    def db_status(self) -> dict | None:
        """Eligible rows, stored vectors, queue depth; None while the database is down."""
        try:
            with psycopg.connect(self.db.url, connect_timeout=3) as conn:
                eligible = conn.execute(sql.SQL(
                    "SELECT count(*) FROM {} WHERE deleted_at IS NULL AND btrim(content) <> ''").format(
                    sql.Identifier("public", SOURCE))).fetchone()[0]
                stored = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table)).fetchone()[0]
                queued = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(self.cfg.project_schema, "change_queue"))).fetchone()[0]
            return {"eligible": eligible, "stored": stored, "queued": queued}
        except psycopg.Error:
            return None

    def progress(self, phase: str) -> None:
        self.read_events()
        c, s, w = self.counts(), self.db_status(), self.writer
        db = f"stored {s['stored']:,}/{s['eligible']:,} eligible, queue {s['queued']:,}" if s else "database down"
        wr = f"writer {sum(w.ops.values()):,} ops ({len(w.failed)} failed)" if w else "writer stopped"
        errs = ", ".join(f"{k} {v}" for k, v in sorted(c["errors"].items())) or "none"
        say(f"[{phase} {self.elapsed():5.0f}s] {wr} | worker pid {self.proc.pid if self.proc else '-'} "
            f"({self.worker_state()}): {c['passes']} passes, {c['consumes']} consumes, "
            f"{c['model_rows']:,} rows through the model, errors {errs} | {db}")

    # -- the run

    def setup(self) -> None:
        say(f"phase setup: embedded PostgreSQL in {self.home}, {self.a.rows:,} rows, capture (trigger), {SPACE}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("events.jsonl", "worker.log", "state", "drain", "provider_fault"):
            (self.workdir / name).unlink(missing_ok=True)
        admin = embedded_postgres.start(self.home)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        self.db = Database(url=url_with_database(admin, DATABASE), embedded=False, home=self.home)
        self.cfg = soak_config()
        from embedding_pipeline.db.schema import ensure_schema
        from embedding_pipeline.embeddings.capture import enable_capture
        from embedding_pipeline.embeddings.setup import prepare_source
        from embedding_pipeline.providers import build_provider

        self.corpus = texts(self.a.rows + 60_000)
        import torch

        torch.set_num_threads(self.a.threads)  # this process embeds only the canaries and the final sample
        with self.db.connect() as conn:
            ensure_extension(conn)
            conn.commit()
            ensure_schema(conn, self.cfg.project_schema)
            conn.commit()
            make_source(conn, self.a.rows)
            self.fresh = build_provider(SPACE, self.cfg.space(SPACE))  # no faults: registration and the final check
            prepare_source(conn, self.cfg, SOURCE, lambda _: self.fresh, spaces=[SPACE])
            # Before the backfill: its snapshot plus the queue then cover every change (capture.py).
            enable_capture(conn, self.cfg, SOURCE, mode="trigger")
            self.ids = [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(
                sql.Identifier("public", SOURCE))).fetchall()]
        self.table = self.cfg.space(SPACE).on(SOURCE).ident

    def run(self) -> int:
        a = self.a
        self.load_before = load()
        self.started_at = datetime.now(UTC)
        self.setup()
        seconds = a.minutes * 60
        cycles = max(1, round(a.minutes / 5))
        plan = _plan(seconds, cycles, self.rng)
        say(f"phase soak: {a.minutes:g} min of writes at {a.rate:g} ops/s, {cycles} fault cycle(s): "
            f"{sum(p[1] == 'kill' for p in plan) + 1} worker kills, {sum(p[1] == 'db_restart' for p in plan)} "
            f"database restarts, {sum(p[1] == 'provider_on' for p in plan)} provider-error windows")
        self.t0 = time.monotonic()
        self.writer = Writer(self.db.url, a.rate, a.seed, self.ids, self.corpus)
        self.writer.start()
        self.start_worker()
        backfill_kill = False
        last_progress = 0.0
        while self.elapsed() < seconds:
            if self.proc.poll() is not None:  # the worker ended on its own: a finding; start another
                self.unexpected_exits.append(self.proc.returncode)
                self.note("worker_exited", code=self.proc.returncode)
                self.start_worker()
            if not backfill_kill and self.worker_state() == "pass":
                s = self.db_status()
                if s and s["stored"] >= 0.2 * a.rows:
                    backfill_kill = True
                    self.kill("backfill", s)
            while plan and plan[0][0] <= self.elapsed():
                _, what, args = plan.pop(0)
                self.fault(what, **args)
            if self.elapsed() - last_progress >= PROGRESS_S:
                last_progress = self.elapsed()
                self.progress("soak")
            time.sleep(0.5)
        if not backfill_kill:
            self.note("backfill_kill_missed", reason="the backfill finished before 20% was stored and seen")
        self.soak_seconds = self.elapsed()
        return self.finish()

    def kill(self, why: str, status: dict | None = None) -> None:
        # Land it while the worker embeds, not while it sleeps between consumes (up to 20 s).
        deadline = time.monotonic() + 20
        while self.worker_state() not in ("pass", "consume") and time.monotonic() < deadline:
            time.sleep(0.05)
        state, pid = self.worker_state(), self.proc.pid
        status = status or self.db_status() or {}
        self.kill_worker()
        self.note("kill -9", why=why, pid=pid, worker_was=state, stored=status.get("stored"),
                  eligible=status.get("eligible"))
        self.start_worker()

    def fault(self, what: str, **args) -> None:
        flag = self.workdir / "provider_fault"
        if what == "provider_on":
            flag.touch()
            self.note("provider errors on", share="50% of model calls")
        elif what == "provider_off":
            flag.unlink(missing_ok=True)
            self.note("provider errors off")
        elif what == "kill":
            self.kill("scheduled")
        elif what == "db_restart":
            t = time.monotonic()
            if args["mode"] == "fast":
                embedded_postgres.stop(self.home)
            else:
                _stop_immediate(self.home)
            stopped = time.monotonic()
            time.sleep(self.a.downtime)
            embedded_postgres.start(self.home)
            self.note("database restart", mode=args["mode"], down_s=round(time.monotonic() - t, 1),
                      stop_s=round(stopped - t, 1))

    def finish(self) -> int:
        say(f"phase drain: writer stopped after {self.soak_seconds:.0f}s; the worker drains the queue")
        self.writer.stop.set()
        self.writer.join(30)
        (self.workdir / "provider_fault").unlink(missing_ok=True)
        if self.proc.poll() is not None:
            self.start_worker()
        (self.workdir / "drain").touch()
        t = time.monotonic()
        last = t
        while self.proc.poll() is None and time.monotonic() - t < self.a.drain_timeout:
            time.sleep(0.5)
            if time.monotonic() - last >= PROGRESS_S:
                last = time.monotonic()
                self.progress("drain")
        drain_exit = self.proc.poll()
        if drain_exit is None:
            self.kill_worker()
        self.drain_seconds = time.monotonic() - t
        self.read_events()
        say(f"phase verify: drift full check, SQL counts, fresh embedding of {self.a.sample or 'every'} rows")
        checks = self.verify(drain_exit)
        return self.report(checks)

    def verify(self, drain_exit) -> list[dict]:
        from embedding_pipeline.db.queue import queue_stats_hook
        from embedding_pipeline.drift import stats as drift

        checks = []

        def check(name: str, value, ok: bool, expected: str) -> None:
            checks.append({"check": name, "value": value, "expected": expected, "ok": bool(ok)})

        c = self.counts()
        check("worker drained (exit 0)", drain_exit, drain_exit == 0, "0")
        expected_version = self.cfg.space(SPACE).model_version
        with self.db.connect() as conn:
            drift.ensure_drift_tables(conn, self.cfg.project_schema)
            conn.commit()
            drift.set_queue_stats_hook(queue_stats_hook)
            try:
                drifts = drift.collect(conn, self.cfg, SOURCE,
                                       queue_stats=drift.queue_stats_for(conn, self.cfg, SOURCE), mode="full")
            finally:
                drift.set_queue_stats_hook(None)
            outcomes = drift.evaluate(self.cfg, drifts, "full")
            with conn.transaction():
                drift.record(conn, self.cfg.project_schema, drifts)
            d = next(x for x in drifts if x.space == SPACE).counts
            failed = [f.check for o in outcomes for f in o.findings]
            check("drift: coverage", f"{100 * d.coverage:.2f}% ({d.covered:,}/{d.eligible:,})",
                  d.covered == d.eligible and d.coverage == 1.0, "100%")
            check("drift: stale vectors", d.stale, d.stale == 0, "0")
            check("drift: orphan vectors", d.orphans, d.orphans == 0, "0")
            check("drift: model versions", dict(d.versions), list(d.versions) == [expected_version], "one")
            check("drift: failed checks", failed, not failed, "none")
            src, tbl = sql.Identifier("public", SOURCE), self.table
            elig = sql.SQL("SELECT id, content FROM {} WHERE deleted_at IS NULL AND btrim(content) <> ''").format(src)
            one = lambda q: conn.execute(q).fetchone()[0]
            dup = one(sql.SQL("SELECT count(*) FROM (SELECT source_id FROM {} GROUP BY source_id "
                              "HAVING count(*) > 1) d").format(tbl))
            check("SQL: duplicate source_id rows", dup, dup == 0, "0")
            eligible = one(sql.SQL("SELECT count(*) FROM ({}) e").format(elig))
            stored = one(sql.SQL("SELECT count(*) FROM {}").format(tbl))
            missing = one(sql.SQL("SELECT count(*) FROM ({}) e LEFT JOIN {} t ON t.source_id = e.id "
                                  "WHERE t.source_id IS NULL").format(elig, tbl))
            orphans = one(sql.SQL("SELECT count(*) FROM {} t LEFT JOIN ({}) e ON e.id = t.source_id "
                                  "WHERE e.id IS NULL").format(tbl, elig))
            check("SQL: eligible rows without a vector", f"{missing} (of {eligible:,})", missing == 0, "0")
            check("SQL: vectors without an eligible row", f"{orphans} (of {stored:,})", orphans == 0, "0")
            versions = conn.execute(sql.SQL("SELECT model_version, count(*) FROM {} GROUP BY 1").format(tbl)).fetchall()
            check("SQL: model_version values", dict(versions), [v for v, _ in versions] == [expected_version], "one")
            queued = one(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.cfg.project_schema,
                                                                                  "change_queue")))
            check("SQL: change queue entries", queued, queued == 0, "0")
            refused = one(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.cfg.project_schema,
                                                                                   "refused_rows")))
            check("SQL: refused rows", refused, refused == 0, "0")
            valid = conn.execute("SELECT count(*) FILTER (WHERE i.indisvalid), count(*) FROM pg_index i "
                                 "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                                 "WHERE i.indrelid = %s::regclass AND a.amname = 'hnsw'",
                                 (tbl.as_string(conn),)).fetchone()
            check("SQL: HNSW index valid", f"{valid[0]}/{valid[1]}", valid[0] == valid[1] == 1, "1/1")
            rows = conn.execute(sql.SQL("SELECT e.id, e.content, t.embedding FROM ({}) e JOIN {} t "
                                        "ON t.source_id = e.id ORDER BY e.id").format(elig, tbl)).fetchall()
        self.final = {"eligible": eligible, "stored": stored}
        sample = random.Random(self.a.seed).sample(rows, min(self.a.sample, len(rows))) if self.a.sample else rows
        fresh = self.fresh.embed_documents([r[1] for r in sample])
        stored_v = np.array([np.asarray(r[2].to_list() if hasattr(r[2], "to_list") else r[2], dtype=np.float32)
                             for r in sample])
        cos = np.sum(fresh * stored_v, axis=1) / (np.linalg.norm(fresh, axis=1) * np.linalg.norm(stored_v, axis=1))
        worst = float(cos.min()) if len(cos) else 1.0
        check("vectors = fresh embedding (min cosine)", f"{worst:.5f} over {len(sample):,} rows", worst >= 0.999,
              ">= 0.999")
        # The faults fired, and every error is one of theirs.
        kills = [e for e in self.timeline if e["kind"] == "kill -9"]
        restarts = [e for e in self.timeline if e["kind"] == "database restart"]
        check("faults: worker kills", len(kills), len(kills) >= 2, ">= 2")
        check("faults: database restarts", len(restarts), len(restarts) >= 2, ">= 2")
        check("faults: provider calls failed (injected)", c["injected_calls"], c["injected_calls"] > 0, "> 0")
        check("worker: unexpected errors", c["errors"].get("unexpected", 0), not c["errors"].get("unexpected"), "0")
        check("worker: exits not caused by a kill", self.unexpected_exits, not self.unexpected_exits, "none")
        check("writer: unexpected errors", self.writer.unexpected, not self.writer.unexpected, "none")
        stray = self.unexplained()
        check("errors outside a fault (+60 s)", stray, not stray, "none")
        return checks

    def unexplained(self) -> list[str]:
        """Worker and writer errors at a time no fault explains: provider errors outside a window (+grace),
        database errors outside a restart (+grace), run-lock errors not after a kill (+grace)."""
        spans: dict[str, list[tuple[float, float]]] = {"provider": [], "database": [], "run_lock": []}
        on = None
        for e in self.timeline:
            if e["kind"] == "provider errors on":
                on = e["at"]
            elif e["kind"] == "provider errors off" and on is not None:
                spans["provider"].append((on, e["at"] + GRACE_S))
                on = None
            elif e["kind"] == "database restart":
                spans["database"].append((e["at"] - e["down_s"] - 1, e["at"] + GRACE_S))
            elif e["kind"] == "kill -9":
                spans["run_lock"].append((e["at"] - 1, e["at"] + GRACE_S))
        out = []
        for e in self.events:
            if e["kind"] == "error" and e["error"] in spans and not any(a <= e["t"] <= b for a, b in spans[e["error"]]):
                out.append(f"worker {e['error']} at {e['t'] - self.timeline_origin():.0f}s: {e['message'][:120]}")
        for at, op in self.writer.failed:
            if not any(a <= at <= b for a, b in spans["database"]):
                out.append(f"writer {op} failed at {at - self.timeline_origin():.0f}s")
        return out

    def timeline_origin(self) -> float:
        return time.time() - self.elapsed()

    def report(self, checks: list[dict]) -> int:
        ok = all(c["ok"] for c in checks)
        c = self.counts()
        w = self.writer
        result = {
            "verdict": "PASS" if ok else "FAIL",
            "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "ended_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": {k: v for k, v in vars(self.a).items() if k not in ("worker",)},
            "space": SPACE, "model_version": self.cfg.space(SPACE).model_version,
            "soak_seconds": round(self.soak_seconds, 1), "drain_seconds": round(self.drain_seconds, 1),
            "load_before": self.load_before, "load_after": load(), "nproc": os.cpu_count(),
            "rows_at_start": self.a.rows, "final": self.final,
            "writer": {"ops": dict(w.ops), "total": sum(w.ops.values()), "failed_db_down": len(w.failed),
                       "unexpected": w.unexpected},
            "worker": {**c, "starts": self.worker_starts},
            "faults": self.timeline, "checks": checks,
        }
        out = Path(self.a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        for ch in checks:
            say(f"  {'ok  ' if ch['ok'] else 'FAIL'} {ch['check']}: {ch['value']} (expected {ch['expected']})")
        if not self.a.no_doc:
            write_doc(result, Path(self.a.doc))
        say(f"result {result['verdict']}: {sum(ch['ok'] for ch in checks)}/{len(checks)} end conditions held; "
            f"{out}" + ("" if self.a.no_doc else f", table in {self.a.doc}"))
        return 0 if ok else 1

    def cleanup(self) -> None:
        if self.writer is not None:
            self.writer.stop.set()
            self.writer.join(10)
        self.kill_worker()
        try:
            if embedded_postgres.stop(self.home):
                say("stopped the soak's PostgreSQL")
        except Exception as e:  # noqa: BLE001 - the immediate stop is the fallback; the folder goes either way
            say(f"fast stop failed ({e}); stopping immediately")
            _stop_immediate(self.home)
        if not self.a.keep:
            shutil.rmtree(self.home, ignore_errors=True)


# ------------------------------------------------------------------ the doc table


def doc_table(r: dict) -> str:
    w, k = r["writer"], r["worker"]
    ops = ", ".join(f"{op.replace('_', ' ')} {w['ops'].get(op, 0):,}" for op in OPS)
    kills = [f for f in r["faults"] if f["kind"] == "kill -9"]
    restarts = [f for f in r["faults"] if f["kind"] == "database restart"]
    windows = sum(f["kind"] == "provider errors on" for f in r["faults"])
    where = ", ".join(f["worker_was"] + (f" (backfill: {f['stored']:,} of {f['eligible']:,} stored)"
                                          if f["why"] == "backfill" and f["stored"] is not None else "")
                      for f in kills)
    errs = ", ".join(f"{n} {kind}" for kind, n in sorted(k["errors"].items())) or "none"
    s = r["settings"]
    started = r["started_at"].replace("T", " ")[:16]
    lines = [
        (f"**Last run** ({started}–{r['ended_at'][11:16]} UTC, `{r['command']}`: "
        f"{r['soak_seconds'] / 60:.1f} min of writes, then a {r['drain_seconds']:.0f} s drain; {r['nproc']} shared "
        f"CPUs, load average {r['load_before'][0]} → {r['load_after'][0]}): **{r['verdict']}**."),
        "",
        "| what | last run |",
        "|---|---|",
        (f"| source | {r['rows_at_start']:,} rows at start, {r['final']['eligible']:,} eligible at the end; "
        f"`{r['space']}` ({r['model_version']}) |"),
        (f"| writer ({s['rate']:g} ops/s, one transaction each) | {w['total']:,} operations: {ops} "
        f"(bulk: {BULK} rows); {w['failed_db_down']} failed while the database was down |"),
        (f"| worker | {k['starts']} processes; {k['model_rows']:,} rows through the model (work lost to kills "
         f"included; plus {k['canary_checks']:,} canary checks of 8 texts, one per pass or consume); {k['passes']} full passes completed ({k['pass_rows']:,} rows written), "
         f"{k['consumes']:,} consumes ({k['consumed_entries']:,} queue entries, {k['consume_rows']:,} rows written), "
         f"{k['deleted_vectors']:,} vectors deleted (killed passes not counted) |"),
        (f"| provider errors | {windows} windows, {k['injected_calls']} model calls failed "
        f"({k['injected_rows']:,} rows) |"),
        f"| kill -9 of the worker | {len(kills)}, while: {where} |",
        f"| database restarts | {len(restarts)} ("
        + ", ".join(f"{f['mode']}, down {f['down_s']} s" for f in restarts) + ") |",
        f"| worker errors, by the fault that explains them | {errs} |",
        "",
        "| end condition | value | expected |",
        "|---|---|---|",
    ]
    for ch in r["checks"]:
        v = ch["value"]
        if isinstance(v, dict):
            v = ", ".join(f"`{a}`: {b:,}" for a, b in v.items())
        elif isinstance(v, list):
            v = "; ".join(map(str, v)) or "none"
        lines.append(f"| {ch['check']} | {v}{'' if ch['ok'] else ' **FAIL**'} | {ch['expected']} |")
    return "\n".join(lines)


def write_doc(result: dict, path: Path) -> None:
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        say(f"{path}: no soak markers; table not written")
        return
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    path.write_text(f"{head}{DOC_BEGIN}\n{doc_table(result)}\n{DOC_END}{tail}")


# ------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long the writer writes (faults: a cycle per 5)")
    ap.add_argument("--rate", type=float, default=3.0, help="writer operations per second (~1.2 rows to embed each)")
    ap.add_argument("--rows", type=int, default=3000, help="rows in the source at the start")
    ap.add_argument("--pass-every", type=float, default=60.0, help="seconds between the worker's full passes")
    ap.add_argument("--downtime", type=float, default=5.0, help="seconds the database stays down per restart")
    ap.add_argument("--sample", type=int, default=1000, help="rows re-embedded for the final check (0: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the worker")
    ap.add_argument("--batch", type=int, default=256,
                    help="rows per commit of a pass and queue entries per consume (the engine's default, 1,024, "
                         "loses a minute of work per kill on a busy 2-core machine)")
    ap.add_argument("--drain-timeout", type=float, default=900.0)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--out", default=str(WORK / "soak.json"))
    ap.add_argument("--workdir", default=str(WORK / "soak"), help="the worker's log, events and fault flags")
    ap.add_argument("--doc", default=str(DOC), help="the doc whose soak table is replaced")
    ap.add_argument("--no-doc", action="store_true", help="do not write the table into --doc")
    ap.add_argument("--keep", action="store_true", help="keep the database folder (stopped) for inspection")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    if a.worker:
        return worker(Path(a.workdir), a.pass_every, a.threads, a.seed, a.batch)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    soak = Soak(a)
    try:
        return soak.run()
    except KeyboardInterrupt:
        say("interrupted: stopping the writer, the worker and the database")
        return 130
    finally:
        soak.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
