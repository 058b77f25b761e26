"""The re-embedding engine: stream a source table into one space's table, resumably.

One pass: delete vectors whose source row is gone, filtered out or blank; stream the rows
whose vector is missing or stale (content hash over content *and* space identity) with a
server-side cursor in key order; embed in batches; write each batch with binary COPY straight
into the space table (stale vectors deleted first, rows no longer eligible pruned after), one
transaction per batch. A kill -9 loses at
most the batch in flight and a rerun resumes where the last commit left off. Encoding and
writing overlap: a writer thread commits batch N while the model encodes batch N+1.

Sharded (``shard=(k, n)``, docs/scaling.md): the pass covers only the rows whose id hashes to
shard k of n (pending rows, orphan deletion, counts), under a lock of its own, so the n shards
of one (source, space) run side by side, on as many workers; the index is then built once by
``build_source_index``, after every shard.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from psycopg import ProgrammingError, sql
from psycopg.errors import UniqueViolation

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.connection import Database
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings import queries
from embedding_pipeline.errors import EmbeddingPipelineError, InputRefused
from embedding_pipeline.providers.base import EmbedResult
from embedding_pipeline.spaces.bindings import build_index, ensure_binding
from embedding_pipeline.spaces.model import SpaceTable
from embedding_pipeline.spaces.registry import register_space
from embedding_pipeline.spaces.source import SourceTable, inspect_source

log = logging.getLogger(__name__)


# Rows per cursor read and commit: READ_BATCHES model batches, at least the provider's
# min_window_rows, at most MAX_READ_ROWS. Each window is one provider.embed() call, so a transport
# that sorts its inputs by length sorts a whole window at once.
READ_BATCHES = 16
MAX_READ_ROWS = 2048


def read_window(provider) -> int:
    """Rows per cursor read, embed() call and commit for this provider (see READ_BATCHES)."""
    return min(max(READ_BATCHES * provider.batch_size, provider.min_window_rows), MAX_READ_ROWS)


class RunInProgress(EmbeddingPipelineError):
    """Another run holds this (source, space) or shard: two writers must never interleave."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (shard K of N, 0 <= K < N) as (K, N); a ValueError names what is wrong."""
    k, sep, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"a shard is K/N with 0 <= K < N (e.g. 0/4), not {text!r}")
    return shard


def run_lock_key(source: str, space: str) -> str:
    return f"reembed:{source}:{space}"


def shard_lock_key(source: str, space: str, shard: tuple[int, int]) -> str:
    # N is part of the key: while `shards` is being changed, shard 0/2 and 0/3 overlap, and both may
    # run (their writes are per-row idempotent upserts), but two runs of the same shard never do.
    return f"reembed:{source}:{space}:{shard[0]}/{shard[1]}"


class _RunLocks:
    """The session advisory locks of one run: (source, space) exclusive, or shared plus the shard's own."""

    def __init__(self, conn, source: SourceTable, space: str, shard: tuple[int, int] | None):
        self.conn = conn
        self.keys = [(run_lock_key(source.name, space), shard is not None)]
        if shard is not None:
            self.keys.append((shard_lock_key(source.name, space, shard), False))
        self.held: list[tuple[str, bool]] = []
        what = f"shard {shard[0]}/{shard[1]} of " if shard else ""
        for key, shared in self.keys:
            if not conn.execute(queries.try_lock_run(shared), (key,)).fetchone()[0]:
                self.release()
                holder = ("a whole-table run or the index build" if shared
                          else "another run of this shard" if shard else "another run (or a shard run)")
                raise RunInProgress(
                    f"{holder} is re-embedding {source.qualified} into space {space!r}; this run of "
                    f"{what}the table did nothing. Wait for it to finish (or cancel it) and run again")
            self.held.append((key, shared))

    def take_writer_slot(self, schema: str, limit: int, logger, interval: float = 10.0, poll: float = 1.0) -> None:
        """Wait for one of ``concurrency.db_writers`` slots (session advisory locks, released with the
        run's): a cap on full and shard passes writing at once that holds for any executor and the CLI."""
        keys = [f"db_writer:{schema}:{i}" for i in range(limit)]
        started = last = time.monotonic()
        while True:
            for key in keys:
                if self.conn.execute(queries.try_lock_run(False), (key,)).fetchone()[0]:
                    self.held.append((key, False))
                    if time.monotonic() - started >= 1:
                        logger.info(f"database writer slot taken after {time.monotonic() - started:.0f} s")
                    return
            self.conn.rollback()  # no snapshot held while waiting
            now = time.monotonic()
            if now - last >= interval or last == started:
                logger.info(f"waiting for a database writer slot: all {limit} (concurrency.db_writers) are held "
                            f"by other re-embed runs; {now - started:.0f} s so far")
                last = now
            time.sleep(poll)

    def release(self) -> None:
        if self.conn.closed or self.conn.broken:
            return
        self.conn.rollback()
        for key, shared in reversed(self.held):
            self.conn.execute(queries.unlock_run(shared), (key,))
        self.held = []


@dataclass
class ReembedStats:
    source: str
    space: str
    shard: str = ""  # "K/N" for a shard run
    todo: int = 0
    embedded: int = 0
    deleted: int = 0
    skipped: Counter = field(default_factory=Counter)
    altered: Counter = field(default_factory=Counter)
    eligible: int = 0
    stored: int = 0
    seconds: float = 0.0
    index_built: bool = False
    index_seconds: float = 0.0
    tokens: int = 0  # tokens actually sent (the server's usage, else the model's tokenizer)
    tokens_method: str = ""
    input_limit: str = ""  # e.g. "512 tokens (estimate: UTF-8 bytes/4), policy truncate"
    # Requests the transport sent and batches it was asked for (retries make the difference), timeouts
    # and 429/503 answers seen; empty for in-process models.
    requests: Counter = field(default_factory=Counter)

    @property
    def rows_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0

    @property
    def coverage(self) -> float:
        return self.stored / self.eligible if self.eligible else 1.0

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(skipped=dict(self.skipped), altered=dict(self.altered), requests=dict(self.requests),
                 rows_per_s=round(self.rows_per_s, 1),
                 coverage=round(self.coverage, 6))
        return d


def pending_rows(source: SourceTable, table: SpaceTable, ids: bool = False, ordered: bool = False,
                 shard: tuple[int, int] | None = None) -> sql.Composed:
    """Eligible rows (of one shard when given) with no vector in this space, or a vector of an older content."""
    # A row of another version (written by bypassing us with the CHECK dropped) is re-embedded too.
    return queries.pending_rows(queries.shard_rows(source.eligible_rows(), shard), table.ident, table.space.content_hash(sql.SQL("s.content")),
                                table.space.model_version, ids=ids, ordered=ordered)


def delete_orphans(conn, source: SourceTable, table: SpaceTable, ids: list | None = None,
                   shard: tuple[int, int] | None = None) -> int:
    """Vectors whose source row is gone, filtered out (soft-deleted) or blank; only `ids` (or one shard) when given."""
    cur = conn.execute(queries.delete_orphans(table.ident, source.eligible_rows(), only_ids=ids is not None,
                                              shard=shard),
                       {"ids": ids} if ids is not None else None)
    return cur.rowcount


def blank_counts(conn, source: SourceTable, shard: tuple[int, int] | None = None) -> Counter:
    c = source.cfg
    row = conn.execute(queries.count_blank(source.ident, c.id_column, c.text_column, c.row_filter, shard)).fetchone()
    return Counter({k: v for k, v in zip(("null", "blank"), row) if v})


def coverage_counts(conn, source: SourceTable, table: SpaceTable,
                    shard: tuple[int, int] | None = None) -> tuple[int, int]:
    row = conn.execute(queries.count_eligible_and_stored(source.eligible_rows(), table.ident, shard)).fetchone()
    return row[0], row[1]


class _Writer:
    """Writes batches on its own connection and thread so that encoding never waits on I/O.

    One transaction per batch: delete the stored vectors of the batch's stale rows, binary COPY the
    whole batch straight into the space table, then prune the rows whose source row stopped being
    eligible since the read (deleted, soft-deleted, blanked). No staging table and no upsert: the
    run lock makes this run the only writer of the table, and the reader's LEFT JOIN already told
    which rows hold a vector. The table's CHECK still pins model_version and its primary key still
    refuses a second vector per row; should a row nonetheless have gained a vector since the read
    (a writer that bypassed the lock), the batch is rolled back and redone replacing every row.
    """

    def __init__(self, db: Database, source: SourceTable, table: SpaceTable):
        from psycopg.pq import Format

        self.conn = db.connect()
        self.table = table.ident
        self.storage = table.space.storage_type
        self.id_type = source.id_type
        self.eligible = source.eligible_rows()
        self.version = table.space.model_version
        self.copy = queries.copy_into_space(self.table)
        self.replace = queries.delete_by_ids(self.table, self.id_type)
        self.prune = queries.prune_ineligible(self.table, self.id_type, self.eligible)
        oid = self.conn.execute(queries.id_type_oid(), (self.id_type,)).fetchone()[0]
        self.conn.rollback()
        # The key goes over the wire in its own binary format; a type psycopg cannot dump in binary
        # (rare: numeric, a domain, ...) is sent as text, which every type's input function reads.
        try:
            self.conn.adapters.get_dumper_by_oid(oid, Format.BINARY)
            self.types = [oid, "bytea", self.storage, "text"]
        except ProgrammingError:  # psycopg: no dumper for that OID
            self.types = None
        # Asynchronous commit for this session only: a *server* crash may lose the last few
        # committed batches (never half of one: WAL replay is all or nothing per transaction), and
        # the next pass finds those rows without a vector and embeds them again. A client crash
        # loses nothing. Measured 0.77x -> see docs/benchmarks.md (write_vs_copy).
        self.conn.execute("SET synchronous_commit = off")
        self.conn.commit()
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.written = 0
        self.thread = threading.Thread(target=self._run, name="reembed-writer", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain; the main thread will raise
            try:
                self.written += self._write(*item)
            except BaseException as e:  # surfaced to the caller by put()/close()
                self.error = e

    def _write(self, ids, shas, vectors, has_vector=None, keys=None) -> int:
        """``ids``: keys as text; ``has_vector``: per row, whether the reader saw a stored vector (None:
        assume every row may have one); ``keys``: the keys in their own type (None: ``ids``)."""
        try:
            return self._copy_batch(ids, shas, vectors, has_vector, keys)
        except UniqueViolation:
            # A vector appeared since the read: redo the batch replacing every row, same transaction shape.
            return self._copy_batch(ids, shas, vectors, None, keys)

    def _copy_batch(self, ids, shas, vectors, has_vector, keys) -> int:
        from pgvector import HalfVector

        stored = ids if has_vector is None else [i for i, h in zip(ids, has_vector) if h]
        binary = self.types is not None and keys is not None
        with self.conn.transaction(), self.conn.cursor() as cur:
            if stored:
                cur.execute(self.replace, {"ids": stored})
            with cur.copy(self.copy if binary else queries.copy_into_space_text(self.table)) as cp:
                if binary:
                    cp.set_types(self.types)
                half = self.storage == "halfvec"
                for i, s, v in zip(keys if binary else ids, shas, vectors):
                    cp.write_row((i, s, HalfVector(v) if half else v, self.version))
            cur.execute(self.prune, {"ids": ids})
            return len(ids) - cur.rowcount

    def put(self, ids, shas, vectors, has_vector=None, keys=None):
        if self.error is not None:
            raise self.error
        self.queue.put((ids, shas, vectors, has_vector, keys))

    def close(self):
        self.queue.put(None)
        self.thread.join()
        self.conn.close()
        if self.error is not None:
            raise self.error


class Progress:
    """Rows done, rate and ETA, logged every ``interval`` seconds while the work runs.

    ``update`` is called per model batch (from the provider, possibly from its request threads);
    a heartbeat thread does the logging, so a line comes every interval even while one slow batch
    is in flight. ``bar`` (a tqdm-like object) is advanced too, for a terminal.
    """

    def __init__(self, label: str, total: int, logger=log, interval: float = 10.0, bar=None):
        self.label, self.total, self.logger, self.interval, self.bar = label, total, logger, interval, bar
        self.start = self.last = time.monotonic()
        self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"progress {label}", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.bar is not None:
            self.bar.close()

    def update(self, n: int) -> None:
        with self._lock:
            self.done += n
        if self.bar is not None and n:
            self.bar.update(n)

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval)):
            if time.monotonic() - self.last >= self.interval:
                self.log()

    def line(self) -> str:
        with self._lock:
            done = min(self.done, self.total)  # a refused batch's first try may have counted some rows
        now = time.monotonic()
        rate = done / max(now - self.start, 1e-9)
        left = max(self.total - done, 0)
        eta = f"{left / rate:,.0f}s" if rate > 0 else "? (first batch in flight)"
        pct = 100.0 * done / self.total if self.total else 100.0
        return f"{self.label}: {done:,}/{self.total:,} rows ({pct:.1f}%), {rate:,.1f} rows/s, ETA {eta}"

    def log(self) -> None:
        self.last = time.monotonic()
        self.logger.info(self.line())


def reembed(db: Database, config: PipelineConfig, source_name: str, space_name: str, provider, *,
            ids: list | None = None, batch_size: int | None = None, build_hnsw: bool = True,
            shard: tuple[int, int] | None = None, logger=log, progress_interval: float = 10.0,
            progress_bar=None) -> ReembedStats:
    """Bring one (source, space) table, or shard ``(k, n)`` of it, up to date; see the module docstring.

    A shard run never builds the index (``build_source_index`` does, after every shard) and never
    vacuums (concurrent VACUUMs of one table queue behind each other); its counts are its shard's.
    """
    if shard is not None:
        if ids is not None:
            raise ValueError("a shard run is a full pass over its shard; an incremental pass (ids) is not sharded")
        k, n = shard
        if not 0 <= k < n:
            raise ValueError(f"shard {k}/{n}: a shard is K/N with 0 <= K < N")
        build_hnsw = False
    space = config.space(space_name)
    schema = config.project_schema
    stats = ReembedStats(source_name, space_name, shard=f"{shard[0]}/{shard[1]}" if shard else "")
    label = f"{source_name} -> {space_name}" + (f" [shard {stats.shard}]" if shard else "")
    # Rows per read/commit (read_window): many model batches, sorted by length together by the
    # provider; 64-row calls in key order measured 0.38x of one large call.
    batch = batch_size or read_window(provider)
    started = time.monotonic()
    with db.connect() as conn:
        ensure_schema(conn, schema)
        conn.commit()
        source = inspect_source(conn, source_name, config.source(source_name))
        if source.cfg.legacy_space == space_name:
            raise EmbeddingPipelineError(
                f"space {space_name!r} is the legacy column {source.qualified}.{source.cfg.legacy_vector_column} "
                "for this source: it is adopted read-only and never re-embedded by us")
        table = space.on(source)
        register_space(conn, config, space_name, provider)
        ensure_binding(conn, source, space)
        from embedding_pipeline.spaces.validator import validate_space

        validate_space(conn, config, space_name, provider, sources=[source], raise_on_failure=True)
        conn.commit()
        locks = _RunLocks(conn, source, space_name, shard)
        try:
            if ids is None:  # a full or shard pass: the bulk writers the cap is for, not capture's small ones
                locks.take_writer_slot(schema, config.concurrency.db_writers, logger, progress_interval)
            # An incremental pass (ids from change capture) touches only those rows: the full-table
            # sweeps belong to the scheduled full pass.
            with conn.transaction():
                stats.deleted = delete_orphans(conn, source, table, ids, shard)
            if ids is None:
                stats.skipped = blank_counts(conn, source, shard)
            params = {"ids": ids} if ids is not None else {}
            query = pending_rows(source, table, ids=ids is not None, shard=shard)
            stats.todo = conn.execute(queries.count_pending(query), params).fetchone()[0]
            query = pending_rows(source, table, ids=ids is not None, ordered=True, shard=shard)
            conn.commit()
            logger.info(f"{source.qualified} -> {space_name}{' shard ' + stats.shard if shard else ''}: "
                        f"{stats.todo:,} rows to embed, {stats.deleted:,} stale vectors deleted, "
                        f"skipped {dict(stats.skipped) or 'none'}")
            with Progress(label, stats.todo, logger, progress_interval,
                          bar=progress_bar(stats.todo) if progress_bar else None) as progress:
                if stats.todo:
                    stats.input_limit = (f"{provider.input_limit} tokens ({provider.input_tokens_method}), "
                                         f"policy {space.input_policy}")
                    sent_before = provider.request_counts()
                    refused = _stream(db, query, params, batch, provider, source, table, stats, progress,
                                      skip_over_limit=space.input_policy == "skip")
                    stats.requests = provider.request_counts() - sent_before
                    if refused:
                        over = sum(1 for _, reason in refused if reason.startswith(OVER_LIMIT))
                        for key, n in (("over_input_limit", over), ("provider_refused", len(refused) - over)):
                            if n:
                                stats.skipped[key] = n
                        with conn.transaction(), conn.cursor() as cur:
                            cur.executemany(queries.upsert_refused(schema),
                                            [(source_name, space_name, i, reason) for i, reason in refused])
                        logger.warning(f"{source.qualified} -> {space_name}: {len(refused)} row(s) not embedded "
                                       f"({len(refused) - over} refused by the provider, {over} over the input "
                                       f"limit of {stats.input_limit}), recorded in {schema}.refused_rows (ids "
                                       "and reasons, never text); the other rows were embedded")
            progress.log()
            if build_hnsw:
                _build_and_record(db, conn, config, source, space_name, table, stats, logger, progress_interval)
            stats.eligible, stats.stored = coverage_counts(conn, source, table, shard)
            conn.execute(queries.clear_refused(schema, table.ident), (source_name, space_name))
            conn.commit()
            if shard is None and stats.embedded + stats.deleted > 0.1 * max(stats.stored, 1):
                _vacuum(db, table)
        finally:
            locks.release()
    stats.seconds = time.monotonic() - started
    return stats


def build_source_index(db: Database, config: PipelineConfig, source_name: str, space_name: str, *,
                       logger=log, progress_interval: float = 10.0) -> ReembedStats:
    """After every shard of a (source, space): build its HNSW index (when missing), record the build,
    refresh the statistics, and count its coverage over the whole table.

    Holds the (source, space) lock exclusive, so it never runs beside a shard run of that table.
    """
    space = config.space(space_name)
    stats = ReembedStats(source_name, space_name)
    started = time.monotonic()
    with db.connect() as conn:
        source = inspect_source(conn, source_name, config.source(source_name))
        table = space.on(source)
        locks = _RunLocks(conn, source, space_name, None)
        try:
            _build_and_record(db, conn, config, source, space_name, table, stats, logger, progress_interval)
            stats.eligible, stats.stored = coverage_counts(conn, source, table)
            conn.commit()
            _vacuum(db, table)
        finally:
            locks.release()
    stats.seconds = time.monotonic() - started
    logger.info(f"{source.qualified} -> {space_name}: index {'built' if stats.index_built else 'already there'}, "
                f"coverage {100 * stats.coverage:.2f}% ({stats.stored:,}/{stats.eligible:,})")
    return stats


def _build_and_record(db, conn, config, source, space_name, table, stats, logger, interval=10.0) -> None:
    """Build the index when missing (progress logged) and record the build for the migration plan."""
    t = time.monotonic()
    stats.index_built = build_index(conn, table, progress_db=db, logger=logger, interval=interval)
    stats.index_seconds = time.monotonic() - t if stats.index_built else 0.0
    if stats.index_built:
        _, stored = coverage_counts(conn, source, table)
        record_index_build(conn, config.project_schema, source.name, space_name, rows=stored,
                           dims=table.space.dimensions, seconds=stats.index_seconds)
        conn.commit()


def record_index_build(conn, schema: str, source: str, space: str, *, rows: int, dims: int, seconds: float) -> None:
    """One row in ``<schema>.index_builds``: the migration plan scales its index time estimates from these."""
    conn.execute(queries.insert_index_build(schema), (source, space, rows, dims, seconds))


def _vacuum(db: Database, table: SpaceTable) -> None:
    """After a bulk change: fresh statistics, and a visibility map that lets drift use index-only scans."""
    with db.connect(autocommit=True) as conn:
        conn.execute(queries.vacuum_analyze(table.ident))


OVER_LIMIT = "over the input limit"


def _stream(db, query, params, batch, provider, source, table, stats, progress, *,
            skip_over_limit: bool = False) -> list[tuple[str, str]]:
    """Embed and write every pending row; return the rows not embedded as (id, reason): those the
    provider refused and, with ``skip_over_limit`` (``input_policy: skip``), those over the space's
    input limit, which are never sent."""
    writer = _Writer(db, source, table)
    refused: list[tuple[str, str]] = []
    try:
        # A named cursor streams from the server; its snapshot stays put while the writer commits.
        with db.connect() as rconn, rconn.cursor(name="ep_pending") as cur:
            cur.itersize = batch
            cur.execute(query, params)
            while rows := cur.fetchmany(batch):
                if skip_over_limit and (over := set(provider.over_limit([r[1] for r in rows]))):
                    reason = (f"{OVER_LIMIT}: more than {provider.input_limit} tokens "
                              f"({provider.input_tokens_method}); input_policy skip")
                    refused.extend((rows[i][0], reason) for i in sorted(over))
                    progress.update(len(over))
                    rows = [r for i, r in enumerate(rows) if i not in over]
                    if not rows:
                        continue
                kept, result = _embed_isolating(provider, rows, refused, progress.update)
                if not kept:
                    continue
                stats.altered.update(result.altered)
                stats.tokens += result.tokens
                stats.tokens_method = result.tokens_method
                writer.put([r[0] for r in kept], [r[2] for r in kept], result.vectors, [r[3] for r in kept],
                           [r[4] for r in kept])
                stats.embedded += len(kept)
    finally:
        writer.close()
    return refused


def _embed_isolating(provider, rows: list, refused: list, on_progress=None) -> tuple[list, EmbedResult | None]:
    """Embed ``rows`` (id, text, sha); when the provider refuses the batch, bisect it so the rows it
    refuses stand alone and every other row is embedded. log2(batch) extra requests per refused row.

    Only an input refusal (``InputRefused``: 400/413/422) is bisected: a server that is down or a
    misconfigured space fails every row alike, and the run stops with that error as before."""
    try:
        return rows, provider.embed([r[1] for r in rows], on_progress=on_progress)
    except InputRefused as e:
        if len(rows) == 1:
            refused.append((rows[0][0], str(e)))
            return [], None
    half = len(rows) // 2
    parts = [_embed_isolating(provider, part, refused) for part in (rows[:half], rows[half:])]
    parts = [(kept, result) for kept, result in parts if kept]
    if on_progress is not None:
        on_progress(sum(len(kept) for kept, _ in parts))
    if not parts:
        return [], None
    results = [result for _, result in parts]
    merged = EmbedResult(np.vstack([r.vectors for r in results]), sum((r.altered for r in results), Counter()),
                         sum(r.tokens for r in results), results[0].tokens_method)
    return [row for kept, _ in parts for row in kept], merged
