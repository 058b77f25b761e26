"""The change queue and capture state tables, and what they say: depth, lag, pending work.

Shared by capture.py (which fills and drains the queue), lazy.py (which adds lazy-search
misses) and the drift check (which reads depth and lag). Reading never needs DDL privileges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db import queries
from embedding_pipeline.db.connection import table_exists
from embedding_pipeline.db.schema import SCHEMA_LOCK, ensure_schema

QUEUE, STATE = "change_queue", "capture_state"
MODES = ("auto", "trigger", "cursor")
# op: I insert, U update, D delete, C seen by the cursor poll, L a lazy-search miss.
_DDL = [
    """CREATE TABLE IF NOT EXISTS {s}.change_queue (
        id bigserial PRIMARY KEY,
        source text NOT NULL,
        source_id text NOT NULL,
        op text NOT NULL CHECK (op IN ('I', 'U', 'D', 'C', 'L')),
        at timestamptz NOT NULL DEFAULT clock_timestamp()
    )""",
    "CREATE INDEX IF NOT EXISTS change_queue_claim ON {s}.change_queue (source, id)",
    "CREATE INDEX IF NOT EXISTS change_queue_row ON {s}.change_queue (source, source_id)",
    """CREATE TABLE IF NOT EXISTS {s}.capture_state (
        source text PRIMARY KEY,
        mode text NOT NULL CHECK (mode IN ('trigger', 'cursor')),
        high_water timestamptz,
        enabled_at timestamptz NOT NULL DEFAULT now(),
        scan_from timestamptz,
        reconciled_at timestamptz
    )""",
]
# Cursor completeness (scan_from: the previous poll's safe point; reconciled_at: the last content-hash
# reconcile) came later: a state table created before gets the columns the first time capture runs.
# So did what a trigger entry says of the row now (eligible, and its content hash per space fingerprint:
# see embeddings.queries.trigger_function_body); NULL on the cursor's, the lazy path's and older entries,
# which the incremental drift check then reads from the source instead.
_UPGRADE = ["ALTER TABLE {s}.capture_state ADD COLUMN IF NOT EXISTS scan_from timestamptz",
            "ALTER TABLE {s}.capture_state ADD COLUMN IF NOT EXISTS reconciled_at timestamptz",
            "ALTER TABLE {s}.change_queue ADD COLUMN IF NOT EXISTS eligible boolean",
            "ALTER TABLE {s}.change_queue ADD COLUMN IF NOT EXISTS digests jsonb"]


def ensure_capture_tables(conn, schema: str) -> None:
    """Create the queue and state tables if missing; a no-op (and no DDL privilege needed) once they exist."""
    if _exists(conn, schema, QUEUE) and _exists(conn, schema, STATE) and _upgraded(conn, schema):
        return
    ensure_schema(conn, schema)
    with conn.transaction():
        conn.execute(queries.lock_schema(), (SCHEMA_LOCK,))
        for stmt in _DDL + _UPGRADE:
            conn.execute(sql.SQL(stmt).format(s=sql.Identifier(schema)))


def _upgraded(conn, schema: str) -> bool:
    return (conn.execute(queries.column_exists(), (schema, STATE, "reconciled_at")).fetchone()[0]
            and conn.execute(queries.column_exists(), (schema, QUEUE, "digests")).fetchone()[0])


def capture_mode(conn, schema: str, source: str, lock: bool = False):
    row = conn.execute(queries.select_capture_mode(sql.Identifier(schema, STATE), lock=lock), (source,)).fetchone()
    return row if row else (None, None)


def _exists(conn, schema: str, table: str) -> bool:
    name = sql.Identifier(schema, table).as_string(conn)
    return conn.execute(queries.select_regclass_exists(), (name,)).fetchone()[0]


def enqueue(conn, schema: str, source: str, ids: list, op: str) -> int:
    """Queue source ids not already queued for the source; returns how many were added."""
    cur = conn.execute(queries.enqueue(sql.Identifier(schema, QUEUE)), {"src": source, "op": op, "ids": [str(i) for i in ids]})
    return cur.rowcount


# ---------------------------------------------------------------- metrics and checks


def queue_stats(conn, schema: str, source: str) -> dict:
    """Queue depth and lag (age of the oldest entry, 0 when empty) of one source."""
    if not _exists(conn, schema, QUEUE):
        return {"queue_depth": 0, "queue_lag_seconds": 0.0}
    depth, lag = conn.execute(queries.queue_depth_and_lag(sql.Identifier(schema, QUEUE)), (source,)).fetchone()
    return {"queue_depth": int(depth), "queue_lag_seconds": float(lag or 0.0)}


def queue_stats_hook(conn, config: PipelineConfig, source: str) -> dict | None:
    """For drift.set_queue_stats_hook: None when the source has no capture and nothing queued.

    In cursor mode rows updated past the mark and not yet polled count as queued too, their
    lag measured from their oldest ``updated_at``.
    """
    schema = config.project_schema
    stats = queue_stats(conn, schema, source)
    if not _exists(conn, schema, STATE):
        return stats if stats["queue_depth"] else None
    mode, high_water = capture_mode(conn, schema, source)
    if mode is None:
        return stats if stats["queue_depth"] else None
    if mode == "cursor":
        c = config.source(source)
        n, lag = conn.execute(queries.cursor_backlog(sql.Identifier(c.schema_, c.table), c.updated_at_column),
                              (high_water,)).fetchone()
        stats = {"queue_depth": stats["queue_depth"] + int(n),
                 "queue_lag_seconds": max(stats["queue_lag_seconds"], float(lag or 0.0))}
    return stats


def pending_signal(conn, config: PipelineConfig, source: str) -> str | None:
    """A key that changes whenever new work appears for a source (None: nothing to do); the sensor's run key."""
    schema = config.project_schema
    if not _exists(conn, schema, QUEUE):
        return None  # capture was never set up: nothing to create from a sensor tick
    top = conn.execute(queries.max_queue_id(sql.Identifier(schema, QUEUE)), (source,)).fetchone()[0]
    parts = [f"q{top}"] if top is not None else []
    mode, high_water = capture_mode(conn, schema, source) if _exists(conn, schema, STATE) else (None, None)
    c = config.source(source)
    if mode == "cursor" and table_exists(conn, c.schema_, c.table):
        newer = conn.execute(queries.max_updated_past(sql.Identifier(c.schema_, c.table), c.updated_at_column),
                             (high_water,)).fetchone()[0]
        if newer is not None:
            parts.append(f"c{newer.timestamp():.6f}")
    conn.commit()
    return "-".join(parts) or None


@dataclass
class LagCheck:
    source: str
    passed: bool
    queue_depth: int
    queue_lag_seconds: float
    max_lag_seconds: float
    message: str

    def to_json(self) -> dict:
        return asdict(self)


def lag_check(conn, config: PipelineConfig, source: str) -> LagCheck:
    """Queue lag of a source against drift.max_queue_lag_seconds; passes when capture is not in use."""
    stats = queue_stats_hook(conn, config, source) or {"queue_depth": 0, "queue_lag_seconds": 0.0}
    limit = config.drift.max_queue_lag_seconds
    lag, depth = stats["queue_lag_seconds"], stats["queue_depth"]
    ok = lag <= limit
    msg = (f"{source}: change queue lag {lag:.0f}s <= {limit:.0f}s ({depth} queued)" if ok else
           f"{source}: change queue lags {lag:.0f}s (> {limit:.0f}s, {depth} queued). Fix: check the capture sensor "
           f"is running, or run `embedding-pipeline capture consume --source {source}`")
    if _exists(conn, config.project_schema, STATE) and capture_mode(conn, config.project_schema, source)[0] == "cursor":
        # Not a failure, but the lag says nothing about hard deletes: say so where the lag is read.
        msg += (f". Cursor mode: hard deletes are found only by the orphan sweep and unbumped writes only by the "
                f"reconcile (every {config.capture.reconcile_every_seconds:.0f}s); the trigger captures both")
    return LagCheck(source, ok, depth, lag, limit, msg)
