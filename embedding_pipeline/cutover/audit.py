"""Cutover and rollback: one transaction flips the bindings and the read path, or nothing changes.

A cutover runs under ``pg_try_advisory_xact_lock('cutover:<source>')``: a second cutover,
rollback or deletion of the same source started meanwhile is refused at once instead of
queueing behind a decision made on a state that is about to change. Inside the lock every
check is made on the state the flip will change, and the flip itself (old binding retired
with its ``delete_after``, new binding active, view and search function replaced, audit row)
commits as one transaction.

Refusals come in two kinds. Structural ones (unknown space, space not configured or built
for the source, already active, deleted) cannot be forced. Gates (verified fresh backup,
100% coverage with nothing stale, a passed shadow evaluation against the current active
space, the validator) are all evaluated and every failure is listed; ``force=True`` skips
them and the audit row records who forced it and which reasons were overridden.
Refused attempts leave bindings and read path untouched and are recorded in the audit table.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime

from psycopg import sql

from embedding_pipeline.config import PipelineConfig

DAY_S = 86_400


def who(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def _at(ts: datetime | None) -> str:
    return f" at {ts.isoformat(timespec='seconds')}" if ts else ""


def _json_default(o):
    return o.isoformat() if isinstance(o, datetime) else str(o)


def record_audit(conn, schema: str, action: str, source: str | None, space: str | None, actor: str,
                 forced: bool = False, details: dict | None = None) -> int:
    return conn.execute(
        sql.SQL("INSERT INTO {}.audit (action, source, space, actor, forced, details) "
                "VALUES (%s, %s, %s, %s, %s, %s::jsonb) RETURNING id").format(sql.Identifier(schema)),
        (action, source, space, actor, forced, json.dumps(details or {}, default=_json_default)),
    ).fetchone()[0]


def retention_days(config: PipelineConfig, space: str) -> float:
    return config.retention_for(space) if space in config.spaces else config.retention_days
