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

import psycopg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.cutover import queries
from embedding_pipeline.cutover.retention import DAY_S, at_text, retention_days
from embedding_pipeline.db.audit import record_audit, who
from embedding_pipeline.db.connection import Database
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.coverage import refused_count, space_counts
from embedding_pipeline.errors import RefusedError
from embedding_pipeline.evaluation.baseline import gate_on_baseline, quality_baseline
from embedding_pipeline.read_path.install import (
    install_read_path,
    search_function_name,
    view_name,
)
from embedding_pipeline.spaces.bindings import active_binding, binding, lock_key
from embedding_pipeline.spaces.model import Binding
from embedding_pipeline.spaces.registry import identity_diff, registered_identity
from embedding_pipeline.spaces.source import SourceTable, inspect_source


def take_lock_or_refuse(conn, source: str, what: str) -> None:
    if not conn.execute(queries.try_lock_source(), (lock_key(source),)).fetchone()[0]:
        raise RefusedError(f"{what} of source {source!r} refused", [
            f"another cutover, rollback or deletion of source {source!r} is in progress (advisory lock "
            f"{lock_key(source)!r} is held); nothing was changed. Wait for it to finish, check "
            "`embedding-pipeline status`, and run again if still needed"])


def table_present(conn, b: Binding) -> bool:
    return conn.execute(queries.select_regclass_exists(), (b.ident.as_string(conn),)).fetchone()[0]


def structural_reasons(conn, config: PipelineConfig, source: str, space: str, target: dict | None,
                       current: Binding | None) -> list[str]:
    """Refusals --force cannot override: there is nothing sound to switch to."""
    if space not in config.spaces:
        return [f"unknown space {space!r}; configured spaces: {sorted(config.spaces)}"]
    src = config.source(source)
    known = [*([src.legacy_space] if src.legacy_space else []), *config.spaces_for(source)]
    if space not in known:
        return [f"space {space!r} is not configured for source {source!r} (its spaces: {known}); "
                f"add it to sources.{source}.spaces and re-embed first"]
    if target is None:
        return [f"space {space!r} has no table for source {source!r} yet; run "
                f"`embedding-pipeline reembed --source {source} --space {space}`"]
    if target.status == "deleted":
        return [f"space {space!r} was deleted for source {source!r}{at_text(target.deleted_at)} "
                "(its table was dropped); a deleted space cannot be activated again: register the model under "
                "a new space name and re-embed"]
    if current is not None and current.space == space:
        return [f"space {space!r} is already the active space of source {source!r}; nothing to do"]
    if not target.is_legacy and not table_present(conn, target):
        return [f"table {target.table_schema}.{target.table_name} of space {space!r} is missing; "
                f"run `embedding-pipeline reembed --source {source} --space {space}`"]
    return []


def backup_reason(db: Database, config: PipelineConfig, source: SourceTable, target: Binding) -> str | None:
    try:
        from embedding_pipeline.backup.catalog import check_backup_fresh
        from embedding_pipeline.backup.run import backup_root
    except ImportError:
        return "the backup module is not available, so no verified backup can be confirmed"
    tables = sorted({source.qualified, f"{target.table_schema}.{target.table_name}"})
    ok, reason = check_backup_fresh(backup_root(db, config.backup), source.name, config.backup.max_age_hours,
                                    required_tables=tables)
    return None if ok else f"backup: {reason}"


def coverage_reason(conn, config: PipelineConfig, source: SourceTable, space: str) -> str | None:
    c = space_counts(conn, config, source, space)
    if c.covered == c.eligible and c.stale == 0:
        return None
    refused = refused_count(conn, config.project_schema, source.name, space)
    why = (f"; {refused:,} of them refused by the provider or over the space's input limit (ids and reasons in "
           f"{config.project_schema}.refused_rows: "
           "fix or delete those rows, or --force knowingly)") if refused else ""
    return (f"space {space!r} is incomplete for {source.qualified}: {c.covered:,} of {c.eligible:,} eligible rows "
            f"have a vector ({c.missing:,} missing, {c.stale:,} stale{why}); run "
            f"`embedding-pipeline reembed --source {source.name} --space {space}`")


def eval_reason(conn, schema: str, source: str, space: str, current: Binding | None) -> str | None:
    """The latest shadow evaluation of (source, space) must have passed against the current active space,
    and its candidate nDCG@10 must still clear that space's quality baseline (``evaluation.baseline``).

    Rows measuring a space alone (candidate = active, the drift job's) are not shadow evaluations.
    """
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    row = cur.execute(queries.select_latest_shadow_eval(schema), (source, space)).fetchone()
    fix = f"run the eval asset / `embedding-pipeline eval --source {source} --space {space}`"
    if row is None:
        return f"no shadow evaluation of space {space!r} for source {source!r}; {fix}"
    what = (f"the latest shadow evaluation of {space!r} for {source!r} (report #{row['id']}, {row['kind']} set "
            f"{row['eval_set'] or '-'},{at_text(row['at'])})")
    where = f"; see {row['report_path']}" if row["report_path"] else ""
    if row["gate_passed"] is None:
        return (f"{what} records no verdict (an unlabeled set measures agreement, not quality){where}; evaluate on "
                "a labeled set, or review the report and cut over with --force")
    if row["gate_passed"] is not True:
        return f"{what} did not pass its gate{where}"
    if current is not None and row["active_space"] != current.space:
        return (f"{what} compared it with {row['active_space']!r}, but the active space is now "
                f"{current.space!r}; {fix}")
    if row["kind"] == "labeled":
        # The gate is re-read against the active space's baseline now: the number the nightly
        # regression check uses, which an accepted report may have moved since the eval ran.
        base = quality_baseline(conn, schema, source, row["active_space"], row["eval_set"])
        candidate = ((row["metrics"] or {}).get("candidate") or {}).get("ndcg@10")
        if candidate is None:
            # A labeled verdict without the number it was given on cannot be re-checked: refuse
            # rather than trust (or crash on) a row some other writer left incomplete.
            return f"{what} records no candidate nDCG@10 to check against the baseline{where}; {fix}"
        if base is not None:
            passed, reason = gate_on_baseline(candidate, base.ndcg_at_10, row["tolerance"] or 0.0)
            if not passed:
                return (f"{what} fails against the active space's quality baseline (eval report "
                        f"#{base.report_id}): {reason}{where}; {fix}")
    return None


def validator_reasons(conn, config: PipelineConfig, source: str, provider_for) -> list[str]:
    from embedding_pipeline.spaces.validator import validate

    report = validate(conn, config, provider_for, sources=[source])
    return [f"validator: {c.message}" for c in report.failures()]


def gate_reasons(conn, db: Database, config: PipelineConfig, source: SourceTable, target: dict,
                 current: Binding | None, provider_for) -> list[str]:
    """Every failing gate (none is skipped because an earlier one failed)."""
    reasons = [backup_reason(db, config, source, target),
               coverage_reason(conn, config, source, target.space),
               eval_reason(conn, config.project_schema, source.name, target.space, current)]
    return [r for r in reasons if r] + validator_reasons(conn, config, source.name, provider_for)


def flip(conn, config: PipelineConfig, source: SourceTable, current: Binding | None, target: Binding) -> dict:
    """Retire ``current`` (delete_after = now + its retention), activate ``target``, repoint the read path."""
    schema = config.project_schema
    retired = None
    if current is not None:
        retired = conn.execute(queries.retire_active(schema), (
            retention_days(config, current.space) * DAY_S, source.name, current.space)).fetchone()
    # After the retirement: the unique index allows one active binding per source at every statement.
    activated = conn.execute(queries.activate(schema), (
        current.space if current else None, source.name, target.space)).fetchone()
    install_read_path(conn, config, source, target)
    return {"source": source.name, "space": target.space, "previous_space": current.space if current else None,
            "activated_at": activated[0], "previous_delete_after": retired[1] if retired else None,
            "view": f"{schema}.{view_name(source.name)}",
            "search_function": f"{schema}.{search_function_name(source.name)}"}


def _switch(db: Database, config: PipelineConfig, source: str, space: str | None, action: str, actor: str,
            forced: bool, decide):
    """Run ``decide(conn, src, current) -> (target, details)`` and the flip under the lock, in one transaction.

    A refusal rolls everything back and is then recorded in the audit table on its own.
    """
    schema = config.project_schema
    with db.connect() as conn:
        ensure_schema(conn, schema)
        conn.commit()
        src = inspect_source(conn, source, config.source(source))
        conn.commit()
        try:
            with conn.transaction():
                take_lock_or_refuse(conn, source, action)
                current = active_binding(conn, schema, source)
                target, details = decide(conn, src, current)
                result = flip(conn, config, src, current, target)
                result.update(details, actor=actor, forced=forced)
                result["audit_id"] = record_audit(conn, schema, action, source, target.space, actor, forced,
                                                  {k: v for k, v in result.items() if k != "audit_id"})
            return result
        except RefusedError as e:
            with conn.transaction():
                record_audit(conn, schema, f"{action}_refused", source, space, actor, forced, {"reasons": e.reasons})
            raise


def _refuse_column_app(config: PipelineConfig, source: str, title: str) -> None:
    """A source whose app reads its own column moves with the app's other sources (cutover/app_flip.py)."""
    app = config.app_of(source)
    if app is not None and config.app(app).cutover == "column":
        raise RefusedError(title + " (--force cannot override this)", [
            f"source {source!r} belongs to app {app!r} (apps.{app}.cutover: column), whose own columns must move "
            f"together: use `embedding-pipeline cutover --app {app} --space X` / `rollback --app {app}`"])


def cutover(db: Database, config: PipelineConfig, source: str, space: str, *, force: bool = False,
            actor: str | None = None, provider_for=None) -> dict:
    """Make ``space`` the active space of ``source``; see the module docstring for the refusals.

    ``provider_for(space)`` enables the validator's canary checks. Returns what changed, with
    the overridden reasons when forced, and the audit row's id.
    """
    actor = who(actor)

    def decide(conn, src, current):
        target = binding(conn, config.project_schema, source, space)
        title = f"cutover of source {source!r} to space {space!r} refused"
        _refuse_column_app(config, source, title)
        structural = structural_reasons(conn, config, source, space, target, current)
        if structural:
            raise RefusedError(title + " (--force cannot override this)", structural)
        gates = gate_reasons(conn, db, config, src, target, current, provider_for)
        if gates and not force:
            raise RefusedError(title, gates)
        return target, {"reasons_overridden": gates if force else []}

    return _switch(db, config, source, space, "cutover", actor, force, decide)


def rollback(db: Database, config: PipelineConfig, source: str, actor: str | None = None) -> dict:
    """Switch back to the active binding's ``previous_space``, any time until that space is deleted.

    No gates: rollback is the emergency path. The space rolled back from is retired with its own
    ``delete_after``; ``warnings`` says when the restored space misses or has stale rows.
    """
    actor = who(actor)
    schema = config.project_schema

    def decide(conn, src, current):
        title = f"rollback of source {source!r} refused"
        _refuse_column_app(config, source, title)
        if current is None:
            raise RefusedError(title, [f"source {source!r} has no active space; run `embedding-pipeline setup`"])
        prev = current.previous_space
        if prev is None:
            raise RefusedError(title, [f"no previous space: source {source!r} has been on {current.space!r} "
                                       "since first start, so there is nothing to roll back to"])
        target = binding(conn, schema, source, prev)
        if target is None or target.status == "deleted":
            when = at_text(target.deleted_at) if target else ""
            raise RefusedError(title, [
                f"previous space {prev!r} was deleted{when} after its retention (its table was dropped); the rollback "
                f"window is closed: restore its table from the backup or cut over to another space"])
        if target.status != "retired":
            raise RefusedError(title, [f"previous space {prev!r} is {target.status!r}, not retired"])
        if not target.is_legacy and not table_present(conn, target):
            raise RefusedError(title, [f"table {target.table_schema}.{target.table_name} of previous space "
                                       f"{prev!r} is missing; restore it from the backup first"])
        # Queries are embedded with the CONFIGURED model of the space rolled back to: if the config now
        # describes another model under that name (e.g. Honcho's variables already point at the new
        # model), the restored vectors and the query vectors would be of two models.
        registered = registered_identity(conn, schema, prev)
        configured = config.space(prev).identity() if prev in config.spaces else None
        if registered is not None and configured != registered:
            changes = "; ".join(identity_diff(registered, configured or {}))
            raise RefusedError(title, [
                f"space {prev!r} is configured as a different model than the one registered for its vectors "
                f"({changes}); nothing was changed. Restore its config (for the legacy space: the "
                "EMBEDDING_MODEL_CONFIG__* / EMBEDDING_VECTOR_DIMENSIONS variables) to the registered model first"])
        c = space_counts(conn, config, src, prev)
        warnings = []
        if c.missing or c.stale:
            warnings.append(f"space {prev!r} misses {c.missing:,} and has {c.stale:,} stale of {c.eligible:,} rows "
                            f"(edits made since it was retired); run `embedding-pipeline reembed --source {source} "
                            f"--space {prev}`" if not target.is_legacy else
                            f"legacy column misses {c.missing:,} of {c.eligible:,} rows")
        return target, {"warnings": warnings}

    return _switch(db, config, source, None, "rollback", actor, False, decide)
