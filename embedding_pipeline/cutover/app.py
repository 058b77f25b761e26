"""Cut an application's own vector columns over to a new space (``apps.<app>.cutover: column``).

Honcho reads ``documents.embedding`` and ``message_embeddings.embedding`` itself, so flipping
the project's view changes nothing it sees. Here the new space is staged as a column beside
the app's one, and one short transaction renames it into place for every source of the app:

1. ``stage``: add ``embedding__<space>`` (``vector(d)``/``halfvec(d)``, nullable, so adding it
   only touches the catalog), copy the per-model table into it in short keyed batches (each its
   own transaction under ``SET LOCAL lock_timeout``, the cursor saved with the batch, so a killed
   fill resumes), then ``CREATE INDEX CONCURRENTLY`` an HNSW index with the opclass, ``m`` and
   ``ef_construction`` of the app's live index (an INVALID leftover is dropped and rebuilt).
2. ``cutover_app``: every gate of the view cutover is checked for every source first (one failing
   source refuses the whole app). Then one transaction, under ``lock_timeout`` with bounded
   retries, locks all the app's tables, copies the few per-model rows embedded since the fill
   (refusing past ``max_flip_remainder``), renames ``embedding`` to ``embedding__<old>`` (kept,
   never altered), the staged column to ``embedding`` and the indexes with them, moves the
   bindings, checks what Honcho's startup validator checks, and writes the audit row.
3. ``rollback_app``: the same flip in reverse, after filling the retired column for rows the
   app wrote since (see docs/app-cutover.md for what is and is not covered).

A same-dimension flip cannot be told apart from a stale write by the database, so it refuses
while the app's sessions are connected unless the operator says they are drained.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.cutover.app_columns import (
    WATERMARK_OVERLAP_S,
    column_index_name,
    ensure_state,
    space_column,
    state_rows,
)
from embedding_pipeline.cutover.audit import record_audit, who
from embedding_pipeline.cutover.switch import flip as flip_bindings
from embedding_pipeline.cutover.switch import (
    gate_reasons,
    structural_reasons,
    take_lock_or_refuse,
)
from embedding_pipeline.db.connection import Database, column_types, declared_dimension
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.errors import ConfigError, DatabaseError, RefusedError
from embedding_pipeline.spaces.bindings import active_binding, binding
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline.spaces.source import SourceTable, inspect_source

log = logging.getLogger(__name__)

# pgvector's HNSW defaults, used when the app's live column has no HNSW index to copy.
HNSW_DEFAULTS = {"m": 16, "ef_construction": 64}


# ---------------------------------------------------------------------------------------------
# Catalog reads


def column_type(conn, schema: str, table: str, column: str) -> str | None:
    return column_types(conn, schema, table).get(column)


def hnsw_index_on(conn, schema: str, table: str, column: str) -> dict | None:
    """The HNSW index on one column: name, validity, opclass, m, ef_construction."""
    row = conn.execute(
        "SELECT ic.relname, i.indisvalid, opc.opcname, coalesce(ic.reloptions, '{}') "
        "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam "
        "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0] "
        "JOIN pg_opclass opc ON opc.oid = i.indclass[0] "
        "WHERE am.amname = 'hnsw' AND n.nspname = %s AND t.relname = %s AND a.attname = %s "
        "ORDER BY i.indisvalid DESC, ic.relname LIMIT 1", (schema, table, column)).fetchone()
    if row is None:
        return None
    opts = dict(HNSW_DEFAULTS)
    for o in row[3]:
        k, _, v = o.partition("=")
        if k in opts:
            opts[k] = int(v)
    return {"name": row[0], "valid": row[1], "opclass": row[2], **opts}


def table_stats(conn, src: SourceTable) -> dict:
    """Size on disk (heap, TOAST and indexes) and dead tuples, as the statistics collector last saw them."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT pg_total_relation_size(c.oid), coalesce(s.n_dead_tup, 0), coalesce(s.n_live_tup, 0) "
        "FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = to_regclass(%s)",
        (src.ident.as_string(conn),)).fetchone()
    return {"total_bytes": row[0], "dead_tuples": row[1], "live_tuples": row[2]}


def app_sessions(conn, app_cfg) -> list[dict]:
    """The app's other sessions on this database, matched by role or application_name."""
    if not app_cfg.app_roles and not app_cfg.application_names:
        return []
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        "SELECT pid, usename, application_name, state, backend_start FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND (usename = ANY(%s) OR application_name = ANY(%s)) ORDER BY pid",
        (list(app_cfg.app_roles), list(app_cfg.application_names))).fetchall()


# ---------------------------------------------------------------------------------------------
# State


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
        conn.execute(sql.SQL(
            "INSERT INTO {}.app_columns (app, source, space, column_name, role) VALUES (%s,%s,%s,%s,'live') "
            "ON CONFLICT (source, space) DO NOTHING").format(sql.Identifier(schema)),
            (app, name, src.cfg.legacy_space, live_col))
        live = [r for r in state_rows(conn, schema, name) if r["role"] == "live"]
        if len(live) != 1:
            raise DatabaseError(f"{schema}.app_columns has {len(live)} live rows for source {name!r}; expected 1. "
                                "Inspect the table and the audit log before any further cutover")
        out.append(AppSource(name, src, live_col, live[0]["space"]))
    return out


def _state(conn, schema: str, source: str, space: str) -> dict | None:
    return next((r for r in state_rows(conn, schema, source) if r["space"] == space), None)


def _set_lock_timeout(conn, ms: int) -> None:
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(ms)}ms")))


def _retrying(what: str, tries: int, fn):
    """Run ``fn`` again after a lock timeout, up to ``tries`` more times, backing off."""
    for attempt in range(tries + 1):
        try:
            return fn()
        except psycopg.errors.LockNotAvailable:
            if attempt == tries:
                raise
            log.info(f"{what}: lock not available, retry {attempt + 1} of {tries}")
            time.sleep(min(0.2 * 2 ** attempt, 2.0))


# ---------------------------------------------------------------------------------------------
# Stage: column, fill, index


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
                _set_lock_timeout(conn, app_cfg.lock_timeout_ms)
                conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    a.src.ident, sql.Identifier(column), sql.SQL(vtype)))
        _retrying(f"add {a.src.qualified}.{column}", app_cfg.flip_retries, add)
        conn.commit()
    return True


def _fill_from_table(db: Database, config: PipelineConfig, a: AppSource, space: str, column: str, app_cfg,
                     report: StageReport) -> None:
    """Copy the per-model table into the column, keyed batches of its own transactions, resumable."""
    schema = config.project_schema
    pm = sql.Identifier(schema, space_table_name(a.name, space))
    st = sql.Identifier(schema, "app_columns")
    tbl, col, idc = a.src.ident, sql.Identifier(column), sql.Identifier(a.src.cfg.id_column)
    key = (a.name, space)
    with db.connect() as conn:
        with conn.transaction():
            conn.execute(sql.SQL(
                "INSERT INTO {} (app, source, space, column_name, role) VALUES (%s,%s,%s,%s,%s) "
                "ON CONFLICT (source, space) DO UPDATE SET column_name = EXCLUDED.column_name").format(st),
                (config.app_of(a.name), a.name, space, column, "live" if space == a.live_space else "staged"))
        state = _state(conn, schema, a.name, space)
        if state["fill_cursor"] is None and state["filled_watermark"] is not None:
            report.mode = "incremental"
            _fill_incremental(conn, config, a, space, column, state["filled_watermark"], app_cfg, report)
            return
        report.mode = "resumed" if state["fill_cursor"] is not None else "full"
        if state["fill_cursor"] is None:
            with conn.transaction():
                conn.execute(sql.SQL("UPDATE {} SET fill_started_at = now(), updated_at = now() "
                                     "WHERE source = %s AND space = %s").format(st), key)
        batch_q = sql.SQL(
            "WITH batch AS (SELECT e.source_id, e.embedding FROM {pm} e "
            "  WHERE %(cur)s::text IS NULL OR e.source_id > %(cur)s::text::{idt} ORDER BY e.source_id LIMIT %(n)s), "
            "upd AS (UPDATE {tbl} t SET {col} = b.embedding FROM batch b "
            "  WHERE t.{id} = b.source_id AND t.{col} IS DISTINCT FROM b.embedding RETURNING 1) "
            "SELECT (SELECT max(source_id)::text FROM batch), (SELECT count(*) FROM batch), (SELECT count(*) FROM upd)"
        ).format(pm=pm, idt=sql.SQL(a.src.id_type), tbl=tbl, col=col, id=idc)
        cursor = state["fill_cursor"]
        while True:
            def one(cursor=cursor):
                with conn.transaction():
                    _set_lock_timeout(conn, app_cfg.lock_timeout_ms)
                    last, n, written = conn.execute(batch_q, {"cur": cursor, "n": app_cfg.fill_batch_size}).fetchone()
                    if n:
                        conn.execute(sql.SQL("UPDATE {} SET fill_cursor = %s, updated_at = now() "
                                             "WHERE source = %s AND space = %s").format(st), (last, *key))
                    return last, n, written
            last, n, written = _retrying(f"fill {a.src.qualified}.{column}", app_cfg.flip_retries, one)
            if not n:
                break
            cursor = last
            report.rows_read += n
            report.rows_written += written
            report.batches += 1
        with conn.transaction():
            conn.execute(sql.SQL("UPDATE {} SET fill_cursor = NULL, filled_watermark = fill_started_at, "
                                 "updated_at = now() WHERE source = %s AND space = %s").format(st), key)


def _refresh_query(config, a: AppSource, space: str, column: str, *, count_only: bool, limit: int | None = None):
    """Per-model rows embedded since the watermark (less the overlap) whose vector the column lacks."""
    pm = sql.Identifier(config.project_schema, space_table_name(a.name, space))
    fmt = dict(pm=pm, tbl=a.src.ident, col=sql.Identifier(column), id=sql.Identifier(a.src.cfg.id_column),
               overlap=sql.Literal(WATERMARK_OVERLAP_S))
    since = "e.embedded_at >= %(wm)s::timestamptz - make_interval(secs => {overlap})"
    if count_only:
        return sql.SQL(
            "SELECT count(*) FROM (SELECT 1 FROM {pm} e JOIN {tbl} t ON t.{id} = e.source_id WHERE " + since
            + " AND t.{col} IS DISTINCT FROM e.embedding LIMIT {lim}) x").format(lim=sql.Literal(limit), **fmt)
    return sql.SQL(
        "UPDATE {tbl} t SET {col} = e.embedding FROM {pm} e WHERE t.{id} = e.source_id AND " + since
        + " AND t.{col} IS DISTINCT FROM e.embedding").format(**fmt)


def _fill_incremental(conn, config, a: AppSource, space: str, column: str, watermark, app_cfg,
                      report: StageReport) -> None:
    """After a full pass: only per-model rows embedded since its watermark, in id batches."""
    schema = config.project_schema
    pm = sql.Identifier(schema, space_table_name(a.name, space))
    st = sql.Identifier(schema, "app_columns")
    with conn.transaction():
        started = conn.execute("SELECT now()").fetchone()[0]
        ids = [r[0] for r in conn.execute(sql.SQL(
            "SELECT source_id FROM {} WHERE embedded_at >= %s::timestamptz - make_interval(secs => %s) "
            "ORDER BY source_id").format(pm), (watermark, WATERMARK_OVERLAP_S)).fetchall()]
    q = sql.SQL("UPDATE {tbl} t SET {col} = e.embedding FROM {pm} e WHERE e.source_id = ANY(%s) "
                "AND t.{id} = e.source_id AND t.{col} IS DISTINCT FROM e.embedding").format(
        tbl=a.src.ident, col=sql.Identifier(column), pm=pm, id=sql.Identifier(a.src.cfg.id_column))
    for i in range(0, len(ids), app_cfg.fill_batch_size):
        chunk = ids[i:i + app_cfg.fill_batch_size]

        def one(chunk=chunk):
            with conn.transaction():
                _set_lock_timeout(conn, app_cfg.lock_timeout_ms)
                return conn.execute(q, (chunk,)).rowcount
        report.rows_written += _retrying(f"fill {a.src.qualified}.{column}", app_cfg.flip_retries, one)
        report.rows_read += len(chunk)
        report.batches += 1
    with conn.transaction():
        conn.execute(sql.SQL("UPDATE {} SET filled_watermark = %s, updated_at = now() "
                             "WHERE source = %s AND space = %s").format(st), (started, a.name, space))


def _fill_by_embedding(db: Database, a: AppSource, space: str, column: str, provider, app_cfg,
                       report: StageReport) -> None:
    """A space with no per-model table (the legacy one): embed the eligible rows its column lacks.

    Resumable by construction: only rows still NULL are read, and a row whose text changed
    between the read and the write is left for the next pass.
    """
    report.mode = "embedded"
    c = a.src.cfg
    tbl, col = a.src.ident, sql.Identifier(column)
    idc, txt = sql.Identifier(c.id_column), sql.Identifier(c.text_column)
    read = sql.SQL("SELECT s.id, s.content FROM ({eligible}) s WHERE EXISTS (SELECT 1 FROM {tbl} x WHERE x.{id} = s.id "
                   "AND x.{col} IS NULL) AND (%(cur)s::text IS NULL OR s.id > %(cur)s::text::{idt}) "
                   "ORDER BY s.id LIMIT %(n)s").format(eligible=a.src.eligible_rows(), tbl=tbl, id=idc, col=col,
                                                      idt=sql.SQL(a.src.id_type))
    write = sql.SQL("UPDATE {tbl} SET {col} = %s WHERE {id} = %s AND {col} IS NULL AND {txt} = %s").format(
        tbl=tbl, col=col, id=idc, txt=txt)
    cursor = None
    with db.connect() as conn:
        while True:
            rows = conn.execute(read, {"cur": cursor, "n": app_cfg.fill_batch_size}).fetchall()
            conn.commit()
            if not rows:
                break
            vecs = provider.embed_documents([r[1] for r in rows])

            def one(vecs=vecs, rows=rows):
                with conn.transaction():
                    _set_lock_timeout(conn, app_cfg.lock_timeout_ms)
                    with conn.cursor() as cur:
                        cur.executemany(write, [(v, r[0], r[1]) for v, r in zip(vecs, rows)])
                        return cur.rowcount
            report.rows_written += _retrying(f"fill {a.src.qualified}.{column}", app_cfg.flip_retries, one) or 0
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
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(a.schema, have["name"])))
            report.index_action = "rebuilt (was INVALID)"
        else:
            report.index_action = "built"
        # The live index's operator family, on this space's storage type (vector_cosine_ops -> halfvec_cosine_ops).
        family = live["opclass"].split("_", 1)[1] if live["opclass"].startswith(("vector_", "halfvec_")) else None
        opclass = f"{cfg.storage_type}_{family}" if family else live["opclass"]
        name = column_index_name(a.table, column)
        conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(cfg.index.maintenance_work_mem)))
        conn.execute(sql.SQL("CREATE INDEX CONCURRENTLY {idx} ON {tbl} USING hnsw ({col} {ops}) "
                             "WITH (m = {m}, ef_construction = {ef})").format(
            idx=sql.Identifier(name), tbl=a.src.ident, col=sql.Identifier(column), ops=sql.SQL(opclass),
            m=sql.Literal(live["m"]), ef=sql.Literal(live["ef_construction"])))
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
        if b is None or b["status"] == "deleted":
            raise DatabaseError(f"space {space!r} has no {'live ' if b else ''}table for source {a.name!r}; run "
                                f"`embedding-pipeline reembed --source {a.name} --space {space}` first")
        started = time.monotonic()
        column = a.column_for(space)
        r = StageReport(a.name, space, column)
        with db.connect() as conn:
            r.before = table_stats(conn, a.src)
        if space != a.live_space:
            r.column_added = _add_column(db, a, column, _vector_type(config, space), app_cfg)
        if b["storage"] == "table":
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
            conn.execute("SELECT pg_stat_force_next_flush()")
            r.after = table_stats(conn, a.src)
        r.seconds = round(time.monotonic() - started, 3)
        log.info(f"staged {a.src.qualified}.{column} ({space}): {r.rows_written:,} rows written in {r.batches} "
                 f"batches, index {r.index_action}")
        reports.append(r)
    return reports


# ---------------------------------------------------------------------------------------------
# The flip


def honcho_validator(conn, config: PipelineConfig, members: list[AppSource], space: str) -> list[str]:
    """What Honcho checks at boot: every app column's declared dimension equals EMBEDDING_VECTOR_DIMENSIONS."""
    dims = config.space(space).dimensions
    out = []
    for a in members:
        declared = declared_dimension(conn, a.schema, a.table, a.live_column)
        if declared != dims:
            out.append(f"{a.src.qualified}.{a.live_column} is declared {declared}-d but the app will be told "
                       f"EMBEDDING_VECTOR_DIMENSIONS={dims} (space {space!r}); Honcho would refuse to start")
    return out


def _same_dimension_reasons(conn, config, app: str, app_cfg, old: str, new: str, drained: bool) -> list[str]:
    if drained or config.space(old).dimensions != config.space(new).dimensions:
        return []
    if not app_cfg.app_roles and not app_cfg.application_names:
        return [f"spaces {old!r} and {new!r} are both {config.space(new).dimensions}-d, so the database cannot refuse "
                f"a vector the app still computes with {old!r}, and apps.{app} names no app_roles or "
                "application_names to look for its sessions: stop the app and pass --drained"]
    sessions = app_sessions(conn, app_cfg)
    if not sessions:
        return []
    who_ = ", ".join(f"pid {s['pid']} ({s['usename']}/{s['application_name'] or '-'})" for s in sessions[:5])
    return [f"spaces {old!r} and {new!r} are both {config.space(new).dimensions}-d: a session of app {app!r} still "
            f"connected would write or query {old!r} vectors into a column that then holds {new!r}, and the database "
            f"cannot tell them apart. {len(sessions)} session(s) connected: {who_}. Stop the app (or point it at the "
            "new model with `embedding-pipeline app-env`) and run again with --drained"]


class _Refused(Exception):
    """Raised inside the flip transaction to roll it back; carries the reasons."""

    def __init__(self, reasons, title=None):
        super().__init__("; ".join(reasons))
        self.reasons, self.title = reasons, title


def _flip_once(db: Database, config: PipelineConfig, app: str, app_cfg, target: str, *, action: str, force: bool,
               drained: bool, actor: str, details: dict, lock_timeout_ms: int | None = None) -> dict:
    """One attempt at the flip transaction; a lock timeout propagates as LockNotAvailable."""
    schema = config.project_schema
    s = sql.Identifier(schema)
    with db.connect() as conn:
        timings: dict = {}
        with conn.transaction():
            _set_lock_timeout(conn, lock_timeout_ms or app_cfg.lock_timeout_ms)
            members = app_sources(conn, config, app)
            for a in sorted(members, key=lambda m: m.name):
                take_lock_or_refuse(conn, a.name, action)
            t0 = time.monotonic()
            # All tables at once, in a fixed order: the app's writes wait (at most lock_timeout) or we give up.
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(a.src.ident for a in sorted(members, key=lambda m: m.src.qualified))))
            timings["lock_wait_ms"] = round(1000 * (time.monotonic() - t0), 1)
            t_locked = time.monotonic()
            olds = {a.live_space for a in members}
            if len(olds) != 1:
                raise _Refused([f"the app's columns hold different spaces ({sorted(olds)}); inspect "
                                f"{schema}.app_columns and the audit log"])
            old = olds.pop()
            if old == target:
                raise _Refused([f"app {app!r}'s columns already hold space {target!r}; nothing to do"])
            reasons = _same_dimension_reasons(conn, config, app, app_cfg, old, target, drained)
            per_source, warnings = [], []
            for a in members:
                staged = space_column(a.live_column, target)
                aside = space_column(a.live_column, old)
                have = column_type(conn, a.schema, a.table, staged)
                if have != _vector_type(config, target):
                    reasons.append(f"{a.src.qualified}.{staged} is {have or 'missing'}, not "
                                   f"{_vector_type(config, target)}: run `embedding-pipeline app-stage --app {app} "
                                   f"--space {target}` first")
                    continue
                if column_type(conn, a.schema, a.table, aside) is not None:
                    reasons.append(f"{a.src.qualified}.{aside} already exists, so the live column cannot be set aside "
                                   "under that name; rename or drop it after checking nothing reads it")
                    continue
                live_idx = hnsw_index_on(conn, a.schema, a.table, a.live_column)
                new_idx = hnsw_index_on(conn, a.schema, a.table, staged)
                if live_idx is not None and (new_idx is None or not new_idx["valid"]):
                    reasons.append(f"{a.src.qualified}.{staged} has {'an INVALID' if new_idx else 'no'} HNSW index; "
                                   f"run `embedding-pipeline app-stage --app {app} --space {target}` to build it")
                    continue
                tb = binding(conn, schema, a.name, target)
                if tb is None or tb["status"] == "deleted":
                    reasons.append(f"{a.name}: space {target!r} has {'been deleted' if tb else 'no binding'}; "
                                   f"run `embedding-pipeline reembed --source {a.name} --space {target}`")
                    continue
                st = _state(conn, schema, a.name, target)
                refreshed = 0
                if tb["storage"] == "table":
                    if st is None or st["filled_watermark"] is None:
                        reasons.append(f"{a.src.qualified}.{staged} was never completely filled; run "
                                       f"`embedding-pipeline app-stage --app {app} --space {target}`")
                        continue
                    pending = conn.execute(_refresh_query(config, a, target, staged, count_only=True,
                                                          limit=app_cfg.max_flip_remainder + 1),
                                           {"wm": st["filled_watermark"]}).fetchone()[0]
                    if pending > app_cfg.max_flip_remainder:
                        reasons.append(f"{a.src.qualified}.{staged}: more than {app_cfg.max_flip_remainder:,} rows "
                                       f"were re-embedded since its last fill (apps.{app}.max_flip_remainder); run "
                                       f"`embedding-pipeline app-stage --app {app} --space {target}` again, then flip")
                        continue
                    # The small remainder, copied under the lock: nothing the per-model table has is left behind.
                    refreshed = conn.execute(_refresh_query(config, a, target, staged, count_only=False),
                                             {"wm": st["filled_watermark"]}).rowcount
                c = a.src.cfg
                missing = conn.execute(sql.SQL(
                    "SELECT count(*) FROM ({eligible}) s JOIN {tbl} t ON t.{id} = s.id WHERE t.{col} IS NULL").format(
                    eligible=a.src.eligible_rows(), tbl=a.src.ident, id=sql.Identifier(c.id_column),
                    col=sql.Identifier(staged))).fetchone()[0]
                if missing:
                    msg = (f"{a.src.qualified}: {missing:,} eligible rows have no {target!r} vector (written after the "
                           f"per-model table was last brought up to date); after the flip their {a.live_column} is "
                           f"NULL until `embedding-pipeline app-stage --app {app} --space {target}` fills it")
                    (warnings if force else reasons).append(msg)
                per_source.append((a, staged, aside, live_idx, new_idx, refreshed, missing))
            if reasons:
                raise _Refused(reasons)
            moved = []
            for a, staged, aside, live_idx, new_idx, refreshed, missing in per_source:
                tbl = a.src.ident
                conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                    tbl, sql.Identifier(a.live_column), sql.Identifier(aside)))
                conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                    tbl, sql.Identifier(staged), sql.Identifier(a.live_column)))
                # Free the live index's name first, then give it to the new column's index.
                if live_idx is not None:
                    conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(a.schema, live_idx["name"]), sql.Identifier(column_index_name(a.table, aside))))
                if new_idx is not None:
                    conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(a.schema, new_idx["name"]),
                        sql.Identifier(live_idx["name"] if live_idx else column_index_name(a.table, a.live_column))))
                # A legacy-column binding follows its column, so coverage and search keep reading the right one.
                conn.execute(sql.SQL("UPDATE {}.bindings SET vector_column = %s WHERE source = %s AND space = %s "
                                     "AND storage = 'legacy_column'").format(s), (aside, a.name, old))
                conn.execute(sql.SQL("UPDATE {}.bindings SET vector_column = %s WHERE source = %s AND space = %s "
                                     "AND storage = 'legacy_column'").format(s), (a.live_column, a.name, target))
                conn.execute(sql.SQL("UPDATE {}.app_columns SET role = 'aside', column_name = %s, updated_at = now() "
                                     "WHERE source = %s AND space = %s").format(s), (aside, a.name, old))
                conn.execute(sql.SQL("UPDATE {}.app_columns SET role = 'live', column_name = %s, updated_at = now() "
                                     "WHERE source = %s AND space = %s").format(s), (a.live_column, a.name, target))
                current = active_binding(conn, schema, a.name)
                result = flip_bindings(conn, config, a.src, current, binding(conn, schema, a.name, target))
                a.live_space = target
                moved.append({"source": a.name, "table": a.src.qualified, "column": a.live_column, "space": target,
                              "previous_space": old, "previous_column": aside, "rows_refreshed_in_flip": refreshed,
                              "rows_without_vector": missing, "index": live_idx["name"] if live_idx else None,
                              "previous_delete_after": result.get("previous_delete_after")})
            bad = honcho_validator(conn, config, members, target)
            if bad:
                raise _Refused(bad)
            timings["lock_held_ms"] = round(1000 * (time.monotonic() - t_locked), 1)
            out = {"app": app, "action": action, "space": target, "previous_space": old, "sources": moved,
                   "warnings": warnings, "actor": actor, "forced": force, "drained": drained, **details, **timings}
            out["audit_id"] = record_audit(conn, schema, action, None, target, actor, force, out)
        # Measured to the commit's return: how long the app's queries on these tables could have waited.
        out["lock_held_ms"] = round(1000 * (time.monotonic() - t_locked), 1)
        out["validator"] = honcho_validator(conn, config, app_sources(conn, config, app), target) or "ok"
        conn.commit()
        return out


def _flip(db: Database, config: PipelineConfig, app: str, target: str, *, action: str, force: bool, drained: bool,
          actor: str, details: dict, lock_timeout_ms: int | None = None) -> dict:
    app_cfg = config.app(app)
    title = f"{action.replace('_', ' ')} of app {app!r} to space {target!r} refused"
    try:
        return _retrying(f"{action} of app {app!r}", app_cfg.flip_retries, lambda: _flip_once(
            db, config, app, app_cfg, target, action=action, force=force, drained=drained, actor=actor,
            details=details, lock_timeout_ms=lock_timeout_ms))
    except psycopg.errors.LockNotAvailable:
        holders = _lock_holders(db, config, app)
        reason = (f"could not lock the app's tables ({', '.join(config.source(s).table for s in app_cfg.sources)}) "
                  f"within lock_timeout {lock_timeout_ms or app_cfg.lock_timeout_ms} ms in "
                  f"{app_cfg.flip_retries + 1} tries: a long transaction holds them{holders}; nothing was changed. "
                  "Let it finish (or end it) and run again")
        _audit_refusal(db, config, app, target, action, actor, force, [reason])
        raise RefusedError(title, [reason]) from None
    except _Refused as e:
        _audit_refusal(db, config, app, target, action, actor, force, e.reasons)
        raise RefusedError(title + " (nothing was changed)", e.reasons) from None


def _lock_holders(db, config, app) -> str:
    try:
        with db.connect() as conn:
            tables = [sql.Identifier(config.source(s).schema_, config.source(s).table).as_string(conn)
                      for s in config.app(app).sources]
            rows = conn.execute(
                "SELECT DISTINCT a.pid, now() - a.xact_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.granted AND l.relation = ANY(%s::regclass[]) AND a.pid <> pg_backend_pid()", (tables,)
            ).fetchall()
        return " (pids " + ", ".join(f"{p} for {str(d).split('.')[0]}" for p, d in rows) + ")" if rows else ""
    except psycopg.Error:
        return ""


def _audit_refusal(db, config, app, target, action, actor, force, reasons) -> None:
    with db.connect() as conn:
        record_audit(conn, config.project_schema, f"{action}_refused", None, target, actor, force,
                     {"app": app, "reasons": reasons})
        conn.commit()


def _gates(db: Database, config: PipelineConfig, app: str, space: str, provider_for) -> tuple[list[str], list[str]]:
    """(structural, gates) reasons of every source, each prefixed with its source."""
    structural, gates = [], []
    schema = config.project_schema
    with db.connect() as conn:
        ensure_schema(conn, schema)
        conn.commit()
        members = app_sources(conn, config, app)
        conn.commit()
        for a in members:
            target = binding(conn, schema, a.name, space)
            current = active_binding(conn, schema, a.name)
            if current is not None and current["space"] != a.live_space:
                structural.append(f"{a.name}: the project's active space is {current['space']!r} but the app's column "
                                  f"{a.src.qualified}.{a.live_column} holds {a.live_space!r} (a view cutover of a "
                                  "column app?); roll that back with `embedding-pipeline rollback --source "
                                  f"{a.name}` first")
                continue
            structural += [f"{a.name}: {r}" for r in structural_reasons(conn, config, a.name, space, target, current)]
            if target is not None and not structural:
                gates += [f"{a.name}: {r}" for r in gate_reasons(conn, db, config, a.src, target, current,
                                                                 provider_for)]
            conn.rollback()
    return structural, gates


def cutover_app(db: Database, config: PipelineConfig, app: str, space: str, *, force: bool = False,
                drained: bool = False, actor: str | None = None, provider_for=None,
                lock_timeout_ms: int | None = None) -> dict:
    """Flip every column of ``app`` to ``space`` in one transaction; see the module docstring."""
    _column_app(config, app)
    actor = who(actor)
    title = f"app cutover of app {app!r} to space {space!r} refused"
    structural, gates = _gates(db, config, app, space, provider_for)
    if structural:
        _audit_refusal(db, config, app, space, "app_cutover", actor, force, structural + gates)
        raise RefusedError(title + " (--force cannot override this; nothing was changed)", structural + gates)
    if gates and not force:
        _audit_refusal(db, config, app, space, "app_cutover", actor, force, gates)
        raise RefusedError(title + " (nothing was changed)", gates)
    # Copy what the per-model tables gained since the last fill outside the lock, so the flip's share stays small.
    stage(db, config, app, space, provider_for)
    return _flip(db, config, app, space, action="app_cutover", force=force, drained=drained, actor=actor,
                 details={"reasons_overridden": gates if force else []}, lock_timeout_ms=lock_timeout_ms)


def rollback_app(db: Database, config: PipelineConfig, app: str, *, drained: bool = False, actor: str | None = None,
                 provider_for=None, lock_timeout_ms: int | None = None) -> dict:
    """Flip the app's columns back to the previous space: no gates (the emergency path), same lock rules.

    The retired column is brought up to date first (from its per-model table, or by embedding the
    rows it lacks with its model when it is the legacy space), so rows the app wrote meanwhile come back.
    """
    _column_app(config, app)
    actor = who(actor)
    schema = config.project_schema
    title = f"rollback of app {app!r} refused"
    with db.connect() as conn:
        ensure_schema(conn, schema)
        members = app_sources(conn, config, app)
        conn.commit()
        prev = set()
        for a in members:
            cur = active_binding(conn, schema, a.name)
            prev.add(cur["previous_space"] if cur else None)
            tb = binding(conn, schema, a.name, cur["previous_space"]) if cur and cur["previous_space"] else None
            if tb is None or tb["status"] == "deleted":
                reason = (f"{a.name}: no previous space to roll back to" if tb is None else
                          f"{a.name}: previous space {tb['space']!r} was deleted; the rollback window is closed")
                _audit_refusal(db, config, app, None, "app_rollback", actor, False, [reason])
                raise RefusedError(title, [reason])
    if len(prev) != 1:
        raise RefusedError(title, [f"the app's sources have different previous spaces ({sorted(map(str, prev))})"])
    target = prev.pop()
    fills = stage(db, config, app, target, provider_for)
    return _flip(db, config, app, target, action="app_rollback", force=True, drained=drained, actor=actor,
                 details={"refilled_rows": {r.source: r.rows_written for r in fills}}, lock_timeout_ms=lock_timeout_ms)


# ---------------------------------------------------------------------------------------------
# What the app must be told, and status


HONCHO_TRANSPORT = {"sentence-transformers": "sentence_transformers", "openai": "openai"}


def live_space(db: Database, config: PipelineConfig, app: str) -> str:
    with db.connect() as conn:
        members = app_sources(conn, config, app)
        conn.commit()
    spaces = {a.live_space for a in members}
    if len(spaces) != 1:
        raise DatabaseError(f"app {app!r}'s columns hold different spaces {sorted(spaces)}; inspect "
                            f"{config.project_schema}.app_columns and the audit log")
    return spaces.pop()


def app_env(db: Database, config: PipelineConfig, app: str) -> dict[str, str]:
    """Honcho's settings for the space its columns hold now (what to deploy it with after a flip)."""
    space = live_space(db, config, app) if config.app(app).cutover == "column" else \
        _view_space(db, config, app)
    cfg = config.space(space)
    env = {"EMBEDDING_VECTOR_DIMENSIONS": str(cfg.dimensions),
           "EMBEDDING_MODEL_CONFIG__MODEL": cfg.model,
           "EMBEDDING_MODEL_CONFIG__TRANSPORT": HONCHO_TRANSPORT.get(cfg.transport, cfg.transport)}
    if cfg.transport == "openai":
        env["EMBEDDING_MODEL_CONFIG__DIMENSIONS_MODE"] = cfg.dimensions_mode
        if cfg.base_url:
            env["EMBEDDING_MODEL_CONFIG__OVERRIDES__BASE_URL"] = cfg.base_url
    return env


def _view_space(db, config, app) -> str:
    """A view app's columns never move: they hold the legacy space."""
    spaces = {config.source(s).legacy_space for s in config.app(app).sources}
    if len(spaces) != 1 or None in spaces:
        raise ConfigError(f"apps.{app}: its sources' legacy_space differ or are unset ({sorted(map(str, spaces))})")
    return spaces.pop()


def app_status(conn, config: PipelineConfig) -> list[dict]:
    out = []
    for name, cfg in config.apps.items():
        entry = {"app": name, "cutover": cfg.cutover, "sources": []}
        try:
            if cfg.cutover == "column":
                members = app_sources(conn, config, name)
            else:
                members = [AppSource(s, inspect_source(conn, s, config.source(s)),
                                     config.source(s).legacy_vector_column, config.source(s).legacy_space)
                           for s in cfg.sources]
            for a in members:
                entry["sources"].append({
                    "source": a.name, "column": f"{a.src.qualified}.{a.live_column}", "holds": a.live_space,
                    "declared_dims": declared_dimension(conn, a.schema, a.table, a.live_column),
                    "aside": {r["space"]: r["column_name"] for r in state_rows(conn, config.project_schema, a.name)
                              if r["role"] != "live"}})
            held = {s["holds"] for s in entry["sources"]}
            entry["holds"] = held.pop() if len(held) == 1 else sorted(held)
            if isinstance(entry["holds"], str):
                entry["validator"] = honcho_validator(conn, config, members, entry["holds"]) or "ok"
        except Exception as e:  # status reports; it never fails on one app
            entry["error"] = str(e)
            conn.rollback()
        out.append(entry)
    return out


def format_app_status(apps: list[dict]) -> str:
    lines = []
    for a in apps:
        lines.append(f"app {a['app']} ({a['cutover']} cutover): columns hold {a.get('holds', '-')}")
        if a.get("error"):
            lines.append(f"  error: {a['error']}")
        for s in a["sources"]:
            aside = ", ".join(f"{sp} in {c}" for sp, c in s["aside"].items()) or "none"
            lines.append(f"  {s['column']}: {s['holds']} ({s['declared_dims']}-d); beside it: {aside}")
        if a.get("validator") not in (None, "ok"):
            lines += [f"  validator: {v}" for v in a["validator"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# After a flip: keep the rollback target current for rows the app writes


def keep_retired_current(db: Database, config: PipelineConfig, source: str, ids: list, provider_for,
                         logger=log) -> dict | None:
    """Called by change capture for the rows it consumed: embed them into the rollback target's column.

    After a flip the app writes only the live space; the column of the space it would roll back
    to (``embedding__<previous>``) would miss every row written since. The retired space is
    often the legacy one, which has no per-model table, so its vectors are computed here with its
    own model, a short transaction per batch, and only where the text is still what was embedded.
    Returns what was written, or None when the source is not in a column app or nothing is retired.
    """
    app = config.app_of(source)
    if app is None or config.app(app).cutover != "column" or not ids:
        return None
    app_cfg = config.app(app)
    schema = config.project_schema
    with db.connect() as conn:
        ensure_state(conn, schema)
        conn.commit()
        live = next((r for r in state_rows(conn, schema, source) if r["role"] == "live"), None)
        current = active_binding(conn, schema, source)
        if live is None or current is None or current["space"] != live["space"] or not current["previous_space"]:
            return None
        prev = binding(conn, schema, source, current["previous_space"])
        if prev is None or prev["status"] == "deleted" or prev["space"] not in config.spaces:
            return None
        src = inspect_source(conn, source, config.source(source))
        column = space_column(src.cfg.legacy_vector_column, prev["space"])
        if column_type(conn, src.cfg.schema_, src.cfg.table, column) is None:
            return None
        rows = conn.execute(sql.SQL("SELECT s.id, s.content FROM ({}) s WHERE s.id = ANY(%s) ORDER BY s.id").format(
            src.eligible_rows()), (list(ids),)).fetchall()
        conn.commit()
        written = 0
        c = src.cfg
        write = sql.SQL("UPDATE {tbl} SET {col} = %s WHERE {id} = %s AND {txt} = %s").format(
            tbl=src.ident, col=sql.Identifier(column), id=sql.Identifier(c.id_column), txt=sql.Identifier(c.text_column))
        provider = provider_for(prev["space"])
        for i in range(0, len(rows), app_cfg.fill_batch_size):
            chunk = rows[i:i + app_cfg.fill_batch_size]
            vecs = provider.embed_documents([r[1] for r in chunk])

            def one(chunk=chunk, vecs=vecs):
                with conn.transaction():
                    _set_lock_timeout(conn, app_cfg.lock_timeout_ms)
                    with conn.cursor() as cur:
                        cur.executemany(write, [(v, r[0], r[1]) for v, r in zip(vecs, chunk)])
                        return cur.rowcount
            written += _retrying(f"keep {src.qualified}.{column} current", app_cfg.flip_retries, one) or 0
    logger.info(f"{src.qualified}.{column}: {written} rows the app wrote since the flip embedded in {prev['space']}")
    return {"app": app, "space": prev["space"], "column": column, "rows": written}
