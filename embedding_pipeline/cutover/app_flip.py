"""The application's flip and rollback: all its sources' columns renamed in one short transaction.

``cutover_app``: every gate of the view cutover is checked for every source first (one failing
source refuses the whole app). Then one transaction, under ``lock_timeout`` with bounded retries,
locks all the app's tables, copies the few per-model rows embedded since the fill (refusing past
``max_flip_remainder``), renames ``embedding`` to ``embedding__<old>`` (kept, never altered), the
staged column to ``embedding`` and the indexes with them, moves the bindings, checks what Honcho's
startup validator checks, and writes the audit row. ``rollback_app`` is the same flip in reverse,
after filling the retired column for rows the app wrote since (docs/app-cutover.md).

A same-dimension flip cannot be told apart from a stale write by the database, so it refuses
while the app's sessions are connected unless the operator says they are drained.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.cutover import queries
from embedding_pipeline.cutover.app_stage import (
    AppSource,
    _column_app,
    _refresh_query,
    _state,
    _vector_type,
    app_sources,
    stage,
)
from embedding_pipeline.cutover.switch import flip as flip_bindings
from embedding_pipeline.cutover.switch import (
    gate_reasons,
    structural_reasons,
    take_lock_or_refuse,
)
from embedding_pipeline.db.audit import record_audit, who
from embedding_pipeline.db.connection import Database, declared_dimension
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.errors import RefusedError
from embedding_pipeline.spaces.bindings import active_binding, binding
from embedding_pipeline.spaces.columns import (
    column_index_name,
    column_type,
    hnsw_index_on,
    retrying,
    set_lock_timeout,
    space_column,
)


def app_sessions(conn, app_cfg) -> list[dict]:
    """The app's other sessions on this database, matched by role or application_name."""
    if not app_cfg.app_roles and not app_cfg.application_names:
        return []
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(queries.select_app_sessions(),
                       (list(app_cfg.app_roles), list(app_cfg.application_names))).fetchall()


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
    with db.connect() as conn:
        timings: dict = {}
        with conn.transaction():
            set_lock_timeout(conn, lock_timeout_ms or app_cfg.lock_timeout_ms)
            members = app_sources(conn, config, app)
            for a in sorted(members, key=lambda m: m.name):
                take_lock_or_refuse(conn, a.name, action)
            t0 = time.monotonic()
            # All tables at once, in a fixed order: the app's writes wait (at most lock_timeout) or we give up.
            conn.execute(queries.lock_tables([a.src.ident for a in sorted(members, key=lambda m: m.src.qualified)]))
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
                if tb is None or tb.status == "deleted":
                    reasons.append(f"{a.name}: space {target!r} has {'been deleted' if tb else 'no binding'}; "
                                   f"run `embedding-pipeline reembed --source {a.name} --space {target}`")
                    continue
                st = _state(conn, schema, a.name, target)
                refreshed = 0
                if not tb.is_legacy:
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
                missing = conn.execute(queries.count_missing(a.src.eligible_rows(), a.src.ident, c.id_column,
                                                             staged)).fetchone()[0]
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
                conn.execute(queries.rename_column(tbl, a.live_column, aside))
                conn.execute(queries.rename_column(tbl, staged, a.live_column))
                # Free the live index's name first, then give it to the new column's index.
                if live_idx is not None:
                    conn.execute(queries.rename_index(sql.Identifier(a.schema, live_idx["name"]),
                                                      column_index_name(a.table, aside)))
                if new_idx is not None:
                    conn.execute(queries.rename_index(
                        sql.Identifier(a.schema, new_idx["name"]),
                        live_idx["name"] if live_idx else column_index_name(a.table, a.live_column)))
                # A legacy-column binding follows its column, so coverage and search keep reading the right one.
                conn.execute(queries.set_legacy_column(schema), (aside, a.name, old))
                conn.execute(queries.set_legacy_column(schema), (a.live_column, a.name, target))
                conn.execute(queries.set_column_role(schema, "aside"), (aside, a.name, old))
                conn.execute(queries.set_column_role(schema, "live"), (a.live_column, a.name, target))
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
        return retrying(f"{action} of app {app!r}", app_cfg.flip_retries, lambda: _flip_once(
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
            rows = conn.execute(queries.select_lock_holders(), (tables,)).fetchall()
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
            if current is not None and current.space != a.live_space:
                structural.append(f"{a.name}: the project's active space is {current.space!r} but the app's column "
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
            prev.add(cur.previous_space if cur else None)
            tb = binding(conn, schema, a.name, cur.previous_space) if cur and cur.previous_space else None
            if tb is None or tb.status == "deleted":
                reason = (f"{a.name}: no previous space to roll back to" if tb is None else
                          f"{a.name}: previous space {tb.space!r} was deleted; the rollback window is closed")
                _audit_refusal(db, config, app, None, "app_rollback", actor, False, [reason])
                raise RefusedError(title, [reason])
    if len(prev) != 1:
        raise RefusedError(title, [f"the app's sources have different previous spaces ({sorted(map(str, prev))})"])
    target = prev.pop()
    fills = stage(db, config, app, target, provider_for)
    return _flip(db, config, app, target, action="app_rollback", force=True, drained=drained, actor=actor,
                 details={"refilled_rows": {r.source: r.rows_written for r in fills}}, lock_timeout_ms=lock_timeout_ms)
