"""Delayed deletion: a retired space's table is dropped only after its retention, never sooner.

A retired (source, space) table is dropped only when every one of these holds:

1. its binding is ``retired`` with storage ``table``: the active space of a source is never a
   candidate, and an adopted legacy column is operator-owned (reported with the
   ``ALTER TABLE ... DROP COLUMN`` to run once sure, never dropped by us);
2. ``now >= delete_after`` (retired_at + the space's retention when it was retired);
3. no rollback window is open. The rollback window of space X for source S is open while X is
   the ``previous_space`` of S's active binding and that binding was activated less than
   ``retention_for(X)`` ago (now < activated_at + retention). It normally ends exactly at
   ``delete_after``; when the retention was lengthened in the config after the retirement,
   the longer one wins;
4. the latest verified backup of the source (``backup.latest_verified``) contains the table;
5. the table lives in the project schema (a source table is never dropped).

Every decision runs under the source's ``cutover:<source>`` advisory lock (so no rollback to
the space can interleave) and is written to the audit table. Deletion is a dry run unless
``deletion_enabled`` is true in the config; ``dry_run=True`` forces one even then.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.cutover import queries
from embedding_pipeline.cutover.retention import retention_days
from embedding_pipeline.db.audit import record_audit, who
from embedding_pipeline.db.connection import Database
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.errors import RefusedError
from embedding_pipeline.spaces.bindings import active_binding, binding, lock_key
from embedding_pipeline.spaces.model import Binding

DROPPED, WOULD_DROP, RETAINED, BLOCKED, OPERATOR_OWNED, NOT_RETIRED = (
    "dropped", "would_drop", "retained", "blocked", "operator_owned", "not_retired")


def effective_dry_run(config: PipelineConfig, dry_run: bool | None) -> bool:
    return True if not config.deletion_enabled else bool(dry_run)


def _utc(ts: datetime | None) -> datetime:
    ts = ts or datetime.now(UTC)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _backup_reason(db: Database, config: PipelineConfig, source: str, qualified: str) -> str | None:
    try:
        from embedding_pipeline.backup.catalog import latest_verified
        from embedding_pipeline.backup.run import backup_root
    except ImportError:
        return "the backup module is not available, so no verified backup of the table can be confirmed"
    manifest = latest_verified(backup_root(db, config.backup), source)
    if manifest is None:
        return f"no verified backup of source {source!r}; run `embedding-pipeline backup --source {source}`"
    if qualified not in {f"{t['schema']}.{t['table']}" for t in manifest.get("tables", [])}:
        return (f"the latest verified backup of {source!r} ({manifest.get('path')}) does not contain {qualified}; "
                f"take one that does before the table can be dropped")
    return None


def decide(conn, db: Database, config: PipelineConfig, b: Binding, now: datetime) -> tuple[str, list[str]]:
    """(decision, reasons) for one binding at ``now``; see the module docstring."""
    source, space = b.source, b.space
    qualified = f"{b.table_schema}.{b.table_name}"
    if b.status != "retired":
        why = (f"space {space!r} is the active space of source {source!r}; the active space is never deleted "
               "(cut over to another space; this one is then deleted after its retention)"
               if b.status == "active" else f"space {space!r} of source {source!r} is {b.status!r}, not retired")
        return NOT_RETIRED, [why]
    due = b.delete_after is not None and now >= b.delete_after
    if b.is_legacy:
        if not due:
            return RETAINED, [f"retained until {b.delete_after}"]
        drop = queries.drop_column(b.ident, b.vector_column).as_string(conn)
        return OPERATOR_OWNED, [
            f"operator-owned: {drop} after you are sure no reader or rollback needs it (the legacy column "
            f"{qualified}.{b.vector_column} belongs to the application and is never dropped by the pipeline)"]
    reasons = [] if due else [f"retained until {b.delete_after}"]
    active = active_binding(conn, config.project_schema, source)
    if active is not None and active.previous_space == space and active.activated_at is not None:
        window_end = active.activated_at + timedelta(days=retention_days(config, space))
        if now < window_end:
            reasons.append(f"rollback window open: {source!r} can roll back from {active.space!r} to {space!r} "
                           f"until {window_end}")
    if b.table_schema != config.project_schema:
        reasons.append(f"{qualified} is outside the project schema {config.project_schema!r}; never dropped")
    backup = _backup_reason(db, config, source, qualified)
    if backup:
        reasons.append(backup)
    if not due:
        return RETAINED, reasons
    return (BLOCKED, reasons) if reasons else (WOULD_DROP, [])


_ACTIONS = {DROPPED: "delete", WOULD_DROP: "delete_dry_run"}


def _process(conn, db: Database, config: PipelineConfig, source: str, space: str, now: datetime, dry: bool,
             actor: str) -> dict:
    """Decide (and drop) one binding in its own transaction under the source's lock; audit it."""
    schema = config.project_schema
    with conn.transaction():
        # Blocking: a scheduled deletion may wait for a cutover to finish, then decides on its result.
        conn.execute(queries.lock_source(), (lock_key(source),))
        b = binding(conn, schema, source, space)
        if b is None:
            b = {"source": source, "space": space, "storage": None, "table_schema": None, "table_name": None,
                 "delete_after": None}
            decision, reasons = NOT_RETIRED, [f"space {space!r} has no binding for source {source!r}"]
        else:
            decision, reasons = decide(conn, db, config, b, now)
        if decision == WOULD_DROP and not dry:
            conn.execute(queries.drop_table(b.ident))
            conn.execute(queries.mark_deleted(schema), (source, space))
            decision = DROPPED
        table = f"{b.table_schema}.{b.table_name}" if b.table_name else None
        result = {"source": source, "space": space, "storage": b.storage, "table": table, "decision": decision,
                  "reasons": reasons, "delete_after": b.delete_after, "dry_run": dry, "now": now}
        result["audit_id"] = record_audit(conn, schema, _ACTIONS.get(decision, "delete_skipped"), source, space,
                                          actor, False, result)
    return result


def _now(conn, now: datetime | None) -> datetime:
    return _utc(now) if now is not None else conn.execute(queries.select_now()).fetchone()[0]


def delete_retired(db: Database, config: PipelineConfig, *, now: datetime | None = None,
                   dry_run: bool | None = None, actor: str | None = None) -> dict:
    """Decide for every retired binding; drop the tables that qualify (unless a dry run).

    ``now`` (default: the database clock) is the moment the retention is judged against.
    Returns ``{dry_run, now, decisions: [{source, space, storage, table, decision, reasons, ...}]}``.
    """
    dry = effective_dry_run(config, dry_run)
    actor = who(actor)
    with db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        when = _now(conn, now)
        pairs = conn.execute(queries.select_retired(config.project_schema)).fetchall()
        conn.commit()
        decisions = [_process(conn, db, config, src, space, when, dry, actor) for src, space in pairs]
    return {"dry_run": dry, "now": when, "decisions": decisions}


def delete_space(db: Database, config: PipelineConfig, source: str, space: str, *, now: datetime | None = None,
                 dry_run: bool | None = None, actor: str | None = None) -> dict:
    """Delete one space's table now if it qualifies; otherwise raise RefusedError with every reason.

    The decision (a refusal included) is written to the audit table either way.
    """
    dry = effective_dry_run(config, dry_run)
    with db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        result = _process(conn, db, config, source, space, _now(conn, now), dry, who(actor))
    if result["decision"] not in (DROPPED, WOULD_DROP):
        raise RefusedError(f"deletion of space {space!r} for source {source!r} refused", result["reasons"])
    return result

