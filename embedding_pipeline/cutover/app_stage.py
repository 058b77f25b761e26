"""Staging an application's new column (``apps.<app>.cutover: column``): add, fill, index.

Honcho reads ``documents.embedding`` and ``message_embeddings.embedding`` itself, so flipping the
project's view changes nothing it sees. The new space is first staged as a column beside the
app's one: ``stage`` adds ``embedding__<space>`` (``vector(d)``/``halfvec(d)``, nullable, so adding
it only touches the catalog), copies the per-model table into it in short keyed batches (each its
own transaction under ``SET LOCAL lock_timeout``, the cursor saved with the batch, so a killed fill
resumes), then ``CREATE INDEX CONCURRENTLY`` an HNSW index with the opclass, ``m`` and
``ef_construction`` of the app's live index (an INVALID leftover is dropped and rebuilt).
The flip is ``app_flip``; the app's settings and status are ``app_env``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.cutover import queries
from embedding_pipeline.db.connection import Database
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.errors import ConfigError, DatabaseError
from embedding_pipeline.spaces.bindings import binding
from embedding_pipeline.spaces.columns import (
    WATERMARK_OVERLAP_S,
    column_index_name,
    column_type,
    ensure_state,
    hnsw_index_on,
    retrying,
    set_lock_timeout,
    space_column,
    state_rows,
    write_vectors,
)
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline.spaces.source import SourceTable, inspect_source

log = logging.getLogger(__name__)


def table_stats(conn, src: SourceTable) -> dict:
    """Size on disk (heap, TOAST and indexes) and dead tuples, as the statistics collector last saw them."""
    conn.execute(queries.clear_stat_snapshot())
    row = conn.execute(queries.select_table_stats(), (src.ident.as_string(conn),)).fetchone()
    return {"total_bytes": row[0], "dead_tuples": row[1], "live_tuples": row[2]}


@dataclass
class AppSource:
    """One source of the app: its table, the column the app reads, and the space that column holds."""

    name: str
    src: SourceTable
    live_column: str
    live_space: str

    @property
    def table(self) -> str:
        return self.src.cfg.table

    @property
    def schema(self) -> str:
        return self.src.cfg.schema_

    def column_for(self, space: str) -> str:
        return self.live_column if space == self.live_space else space_column(self.live_column, space)


def _column_app(config: PipelineConfig, app: str):
    cfg = config.app(app)
    if cfg.cutover != "column":
        raise ConfigError(f"apps.{app}.cutover is {cfg.cutover!r}: this app reads the project's view, so cut over "
                          f"its sources one by one (`embedding-pipeline cutover --source S --space X`), or set "
                          f"apps.{app}.cutover: column")
    return cfg


def app_sources(conn, config: PipelineConfig, app: str) -> list[AppSource]:
    """The app's sources, checked against the catalog, with the space each live column holds."""
    cfg = config.app(app)
    schema = config.project_schema
    ensure_state(conn, schema)
    out = []
    for name in cfg.sources:
        src = inspect_source(conn, name, config.source(name))
        live_col = src.cfg.legacy_vector_column
        # First use: the app's column holds the legacy space (the model the app writes today).
        conn.execute(queries.insert_live_column(schema), (app, name, src.cfg.legacy_space, live_col))
        live = [r for r in state_rows(conn, schema, name) if r["role"] == "live"]
        if len(live) != 1:
            raise DatabaseError(f"{schema}.app_columns has {len(live)} live rows for source {name!r}; expected 1. "
                                "Inspect the table and the audit log before any further cutover")
        out.append(AppSource(name, src, live_col, live[0]["space"]))
    return out


def _state(conn, schema: str, source: str, space: str) -> dict | None:
    return next((r for r in state_rows(conn, schema, source) if r["space"] == space), None)


@dataclass
class StageReport:
    source: str
    space: str
    column: str
    column_added: bool = False
    mode: str = ""  # 'full' | 'resumed' | 'incremental' | 'embedded'
    rows_read: int = 0
    rows_written: int = 0
    batches: int = 0
    index: str | None = None
    index_action: str = "none"  # 'built' | 'rebuilt (was INVALID)' | 'present' | 'none'
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _vector_type(config, space: str) -> str:
    cfg = config.space(space)
    return f"{cfg.storage_type}({cfg.dimensions})"


def _add_column(db: Database, a: AppSource, column: str, vtype: str, app_cfg) -> bool:
    """ADD COLUMN (nullable, no default: a catalog-only change) under lock_timeout; False when present."""
    with db.connect() as conn:
        have = column_type(conn, a.schema, a.table, column)
        if have is not None:
            if have != vtype:
                raise DatabaseError(
                    f"{a.src.qualified}.{column} exists as {have}, not {vtype}: it is not a column this tool staged "
                    f"for this space. Rename or drop it (after checking nothing reads it) and stage again")
            return False

        def add():
            with conn.transaction():
                set_lock_timeout(conn, app_cfg.lock_timeout_ms)
                conn.execute(queries.add_column(a.src.ident, column, vtype))
        retrying(f"add {a.src.qualified}.{column}", app_cfg.flip_retries, add)
        conn.commit()
    return True


def _fill_from_table(db: Database, config: PipelineConfig, a: AppSource, space: str, column: str, app_cfg,
                     report: StageReport) -> None:
    """Copy the per-model table into the column, keyed batches of its own transactions, resumable."""
    schema = config.project_schema
    pm = sql.Identifier(schema, space_table_name(a.name, space))
    key = (a.name, space)
    with db.connect() as conn:
        with conn.transaction():
            conn.execute(queries.upsert_column(schema), (config.app_of(a.name), a.name, space, column,
                                                         "live" if space == a.live_space else "staged"))
        state = _state(conn, schema, a.name, space)
        if state["fill_cursor"] is None and state["filled_watermark"] is not None:
            report.mode = "incremental"
            _fill_incremental(conn, config, a, space, column, state["filled_watermark"], app_cfg, report)
            return
        report.mode = "resumed" if state["fill_cursor"] is not None else "full"
        if state["fill_cursor"] is None:
            with conn.transaction():
                conn.execute(queries.start_fill(schema), key)
        batch_q = queries.fill_batch(pm, a.src.ident, column, a.src.cfg.id_column, a.src.id_type)
        cursor = state["fill_cursor"]
        while True:
            def one(cursor=cursor):
                with conn.transaction():
                    set_lock_timeout(conn, app_cfg.lock_timeout_ms)
                    last, n, written = conn.execute(batch_q, {"cur": cursor, "n": app_cfg.fill_batch_size}).fetchone()
                    if n:
                        conn.execute(queries.save_fill_cursor(schema), (last, *key))
                    return last, n, written
            last, n, written = retrying(f"fill {a.src.qualified}.{column}", app_cfg.flip_retries, one)
            if not n:
                break
            cursor = last
            report.rows_read += n
            report.rows_written += written
            report.batches += 1
        with conn.transaction():
            conn.execute(queries.finish_fill(schema), key)


def _refresh_query(config, a: AppSource, space: str, column: str, *, count_only: bool, limit: int | None = None):
    """Per-model rows embedded since the watermark (less the overlap) whose vector the column lacks."""
    pm = sql.Identifier(config.project_schema, space_table_name(a.name, space))
    if count_only:
        return queries.count_unrefreshed(pm, a.src.ident, column, a.src.cfg.id_column, WATERMARK_OVERLAP_S, limit)
    return queries.refresh_column(pm, a.src.ident, column, a.src.cfg.id_column, WATERMARK_OVERLAP_S)


def _fill_incremental(conn, config, a: AppSource, space: str, column: str, watermark, app_cfg,
                      report: StageReport) -> None:
    """After a full pass: only per-model rows embedded since its watermark, in id batches."""
    schema = config.project_schema
    pm = sql.Identifier(schema, space_table_name(a.name, space))
    with conn.transaction():
        started = conn.execute(queries.select_now()).fetchone()[0]
        ids = [r[0] for r in conn.execute(queries.select_ids_since(pm), (watermark, WATERMARK_OVERLAP_S)).fetchall()]
    q = queries.fill_ids(a.src.ident, column, pm, a.src.cfg.id_column)
    for i in range(0, len(ids), app_cfg.fill_batch_size):
        chunk = ids[i:i + app_cfg.fill_batch_size]

        def one(chunk=chunk):
            with conn.transaction():
                set_lock_timeout(conn, app_cfg.lock_timeout_ms)
                return conn.execute(q, (chunk,)).rowcount
        report.rows_written += retrying(f"fill {a.src.qualified}.{column}", app_cfg.flip_retries, one)
        report.rows_read += len(chunk)
        report.batches += 1
    with conn.transaction():
        conn.execute(queries.set_watermark(schema), (started, a.name, space))


def _fill_by_embedding(db: Database, a: AppSource, space: str, column: str, provider, app_cfg,
                       report: StageReport) -> None:
    """A space with no per-model table (the legacy one): embed the eligible rows its column lacks.

    Resumable by construction: only rows still NULL are read, and a row whose text changed
    between the read and the write is left for the next pass.
    """
    report.mode = "embedded"
    c = a.src.cfg
    read = queries.select_unfilled(a.src.eligible_rows(), a.src.ident, c.id_column, column, a.src.id_type)
    write = queries.write_vector(a.src.ident, column, c.id_column, c.text_column)
    cursor = None
    with db.connect() as conn:
        while True:
            rows = conn.execute(read, {"cur": cursor, "n": app_cfg.fill_batch_size}).fetchall()
            conn.commit()
            if not rows:
                break
            vecs = provider.embed_documents([r[1] for r in rows])
            report.rows_written += write_vectors(conn, write, rows, vecs, app_cfg, f"fill {a.src.qualified}.{column}")
            report.rows_read += len(rows)
            report.batches += 1
            cursor = str(rows[-1][0])


def _ensure_index(db: Database, config: PipelineConfig, a: AppSource, space: str, column: str,
                  report: StageReport) -> None:
    """CREATE INDEX CONCURRENTLY like the app's live index; an INVALID leftover (a killed build) is rebuilt."""
    cfg = config.space(space)
    with db.connect(autocommit=True) as conn:
        live = hnsw_index_on(conn, a.schema, a.table, a.live_column)
        if live is None:
            return  # the app indexes nothing here; neither do we
        have = hnsw_index_on(conn, a.schema, a.table, column)
        if have is not None and have["valid"]:
            report.index, report.index_action = have["name"], "present"
            return
        if have is not None:
            conn.execute(queries.drop_index_concurrently(sql.Identifier(a.schema, have["name"])))
            report.index_action = "rebuilt (was INVALID)"
        else:
            report.index_action = "built"
        # The live index's operator family, on this space's storage type (vector_cosine_ops -> halfvec_cosine_ops).
        family = live["opclass"].split("_", 1)[1] if live["opclass"].startswith(("vector_", "halfvec_")) else None
        opclass = f"{cfg.storage_type}_{family}" if family else live["opclass"]
        name = column_index_name(a.table, column)
        conn.execute(queries.set_session_maintenance_work_mem(cfg.index.maintenance_work_mem))
        conn.execute(cfg.hnsw_ddl(a.src.ident, name, column, concurrently=True, opclass=opclass, m=live["m"],
                                  ef_construction=live["ef_construction"]))
        report.index = name


def stage(db: Database, config: PipelineConfig, app: str, space: str, provider_for=None,
          sources: list[str] | None = None) -> list[StageReport]:
    """Stage ``space`` beside every app column (or bring the column that holds it up to date)."""
    app_cfg = _column_app(config, app)
    config.space(space)
    with db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        members = app_sources(conn, config, app)
        conn.commit()
        bounds = {m.name: binding(conn, config.project_schema, m.name, space) for m in members}
    reports = []
    for a in members:
        if sources is not None and a.name not in sources:
            continue
        b = bounds[a.name]
        if b is None or b.status == "deleted":
            raise DatabaseError(f"space {space!r} has no {'live ' if b else ''}table for source {a.name!r}; run "
                                f"`embedding-pipeline reembed --source {a.name} --space {space}` first")
        started = time.monotonic()
        column = a.column_for(space)
        r = StageReport(a.name, space, column)
        with db.connect() as conn:
            r.before = table_stats(conn, a.src)
        if space != a.live_space:
            r.column_added = _add_column(db, a, column, _vector_type(config, space), app_cfg)
        if not b.is_legacy:
            _fill_from_table(db, config, a, space, column, app_cfg, r)
        elif space == a.live_space:
            # The app's own legacy column, live: the app writes it; we never do.
            r.mode = "live (written by the app)"
        else:
            if provider_for is None:
                raise ConfigError(f"space {space!r} of source {a.name!r} has no per-model table; filling its column "
                                  "needs its model (pass provider_for)")
            _fill_by_embedding(db, a, space, column, provider_for(space), app_cfg, r)
        if space != a.live_space:
            _ensure_index(db, config, a, space, column, r)
        with db.connect() as conn:
            conn.execute(queries.flush_stats())
            r.after = table_stats(conn, a.src)
        r.seconds = round(time.monotonic() - started, 3)
        log.info(f"staged {a.src.qualified}.{column} ({space}): {r.rows_written:,} rows written in {r.batches} "
                 f"batches, index {r.index_action}")
        reports.append(r)
    return reports


HONCHO_TRANSPORT = {"sentence-transformers": "sentence_transformers", "openai": "openai"}
