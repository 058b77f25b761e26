"""Drift: are a source's vectors still from one model, complete, fresh and clean?

For every space bound to a source (a per-model table or the adopted legacy column) this
reports the ``model_version`` distribution (anything but one version is drift), coverage
(embedded / eligible rows), stale vectors (content hash differs from the row's content now),
orphans (vectors of rows gone, filtered out or blanked), NULL vectors and the declared vs
configured dimension. Each run appends to ``<schema>.drift_history``; ``evaluate`` turns the
stats into checks whose findings name table, space, numbers and the fix (never content).
The nightly quality regression check lives here too; its baseline is the one the cutover gate
reads (``evaluation.baseline``).

Cost per (source, space), by mode (see ``collect``; measured in docs/benchmarks.md):
- full (the proof): one hash FULL JOIN of the source's eligible rows with the space table,
  grouped by model_version, so the version distribution comes from the same pass. The source
  side is a sequential scan hashing every content (sha256, CPU-bound, about a second per
  million short rows); the space side reads the covering primary key (source_id INCLUDE
  model_version, content_sha256) index-only once the table is vacuumed.
- incremental: the capture queue's rows (and refused rows): O(changes). The trigger wrote with
  each change whether the row is eligible and its content hash per space, so only the space
  table is probed by key; rows without that (cursor, lazy, older entries) are read from the
  source by key too. The version is proved by the validated CHECK constraint (catalog), else counted.
- version: one GROUP BY model_version over the space table (index-only on the covering key).
- legacy column: one sequential scan of the source; ``count(column)`` reads the NULL bitmap
  only and never detoasts a vector.
- dimensions, the NOT NULL flag and the CHECK constraint: catalog lookups, no table read.
  NULL vectors in a per-model table are counted only when its NOT NULL is gone (otherwise
  they are 0 by construction, no scan). Non-finite values cannot be stored at all: pgvector
  rejects NaN and +-Infinity on input (text and binary), so there is nothing to scan for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db import queries as db_queries
from embedding_pipeline.db.connection import declared_dimension
from embedding_pipeline.db.queue import QUEUE, STATE
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.drift import queries
from embedding_pipeline.embeddings.coverage import (
    SpaceCounts,
    changed_counts,
    space_counts,
    version_counts,
)
from embedding_pipeline.evaluation.baseline import (
    migrate_quality_baselines,
    quality_baseline,
)
from embedding_pipeline.spaces.bindings import bindings
from embedding_pipeline.spaces.model import Binding
from embedding_pipeline.spaces.source import SourceTable, inspect_source

# What a drift run counts (see MODES_DOC); the Dagster asset reads it from the run's `drift/mode` tag.
MODES = ("full", "incremental", "version")
# The checks each mode answers; the others are not run (and must not show as passed).
MODE_CHECKS = {
    "full": ("single_model_version", "dimensions_match", "coverage", "no_stale_vectors", "no_orphans",
             "no_null_vectors", "queue_lag"),
    "incremental": ("single_model_version", "dimensions_match", "coverage", "no_stale_vectors", "no_orphans",
                    "no_null_vectors", "queue_lag"),
    "version": ("single_model_version", "dimensions_match", "no_null_vectors", "queue_lag"),
}
# An incremental check builds on the last full one; older than this, the run is a full check again.
FULL_PROOF_MAX_AGE = timedelta(days=8)  # the weekly full schedule plus a day of slack
CHECKED_STATUSES = ("active", "shadow")  # retired spaces are frozen for rollback: reported, not checked

DRIFT_DDL_LOCK = 724_311_007


def ensure_drift_tables(conn: psycopg.Connection, schema: str) -> None:
    """Create drift_history if missing and fold an older install's quality_baselines into eval_reports
    (idempotent, serialised).

    The lock is a transaction lock: on a connection with a transaction already open, commit
    soon after, or other processes creating the tables wait for that commit.
    """
    with conn.transaction():
        conn.execute(queries.lock_ddl(), (DRIFT_DDL_LOCK,))
        for stmt in queries.create_drift_tables(schema):
            conn.execute(stmt)
        migrate_quality_baselines(conn, schema)


@dataclass
class SpaceDrift:
    """One bound space's stats: the shared counts plus what only drift looks at."""

    counts: SpaceCounts
    status: str  # the binding's: active | shadow | retired
    source_table: str  # schema.table of the source, for messages
    version_pinned: bool | None = None  # CHECK (model_version = ...) present and validated; None: legacy
    wrong_dims: int = 0  # vectors of another dimension in a column that declares none
    queue_depth: int | None = None
    queue_lag_seconds: float | None = None
    mode: str = "full"  # what was counted: full | incremental | version
    mode_note: str = ""  # why (a requested incremental check that fell back to full says so here)
    started_at: datetime | None = None  # database clock before the counts: a full check's proof time
    changed_rows: int | None = None  # incremental: rows checked (queued or refused)

    @property
    def source(self) -> str:
        return self.counts.source

    @property
    def space(self) -> str:
        return self.counts.space

    @property
    def checked(self) -> bool:
        return self.status in CHECKED_STATUSES

    def to_json(self) -> dict:
        return {**self.counts.to_json(), "status": self.status, "source_table": self.source_table,
                "version_pinned": self.version_pinned, "wrong_dims": self.wrong_dims,
                "queue_depth": self.queue_depth, "queue_lag_seconds": self.queue_lag_seconds, "mode": self.mode,
                "mode_note": self.mode_note, "changed_rows": self.changed_rows}


# Change capture (another module) reports its queue per source through this hook:
# fn(conn, config, source) -> {"queue_depth": int, "queue_lag_seconds": float} | None.
QueueStatsHook = Callable[[psycopg.Connection, PipelineConfig, str], "dict | None"]
_queue_stats_hook: QueueStatsHook | None = None


def set_queue_stats_hook(fn: QueueStatsHook | None) -> None:
    global _queue_stats_hook
    _queue_stats_hook = fn


def queue_stats_for(conn, config: PipelineConfig, source: str) -> dict | None:
    return _queue_stats_hook(conn, config, source) if _queue_stats_hook else None


def collect(conn: psycopg.Connection, config: PipelineConfig, source: str, *,
            queue_stats: dict | None = None, mode: str = "full") -> list[SpaceDrift]:
    """Stats for every space bound to ``source`` (deleted bindings and unconfigured retired ones skipped).

    ``mode``:
    - ``full``: every count from the tables themselves (one FULL JOIN per space, hashing every eligible
      row's text): the proof.
    - ``incremental``: coverage, stale and orphans from change capture, in O(changes): only the rows
      queued by the capture trigger (and rows the provider refused) are probed by key, on top of the last
      full check, which must have found the space clean. Sound because every change to the source since
      that check is either still queued or was re-embedded by the consumer before its entry was deleted.
      The version is proved by the table's validated CHECK constraint (no scan), else counted. Falls back
      to a full check, saying why in ``mode_note``, when the premise does not hold: no enabled capture
      trigger, capture enabled after the last full check, no clean full check within FULL_PROOF_MAX_AGE,
      or an adopted legacy column. Not seen by it (so the periodic full check stays): changes that fire no
      row trigger (TRUNCATE, a disabled trigger, session_replication_role = replica) and writes into the
      space table that bypass the engine.
    - ``version``: the model_version distribution only (one GROUP BY over the space table's covering key);
      coverage, stale and orphans are not counted (0) and their checks are not run.

    Returns [] when nothing is bound yet (``setup`` never ran for the source).
    """
    if mode not in MODES:
        raise ValueError(f"drift mode {mode!r}: choose one of {MODES}")
    src_cfg = config.source(source)  # an unknown name raises ConfigError listing the configured sources
    bound = [b for b in bindings(conn, config.project_schema, source)
             if b.status != "deleted" and (b.status != "retired" or b.space in config.spaces)]
    if not bound:
        return []
    src = inspect_source(conn, source, src_cfg)
    queue_stats = queue_stats or {}
    out = []
    for b in bound:
        started = conn.execute(queries.clock()).fetchone()[0]
        ran, note, changed = mode, "", None
        if mode == "version":
            counts = version_counts(conn, config, src, b.space)
        elif mode == "incremental":
            counts, changed, note = _incremental(conn, config, src, b, started)
            ran = "full" if counts is None else "incremental"
            if counts is None:
                counts = space_counts(conn, config, src, b.space)
        else:
            counts = space_counts(conn, config, src, b.space)
        drift = SpaceDrift(counts, b.status, src.qualified,
                           queue_depth=queue_stats.get("queue_depth"),
                           queue_lag_seconds=queue_stats.get("queue_lag_seconds"),
                           mode=ran, mode_note=note, started_at=started, changed_rows=changed)
        if not b.is_legacy:
            _table_extras(conn, config, b, drift)
            if ran == "incremental" and not drift.version_pinned:
                # No validated CHECK pins the version: count it (one GROUP BY over the covering key).
                drift.counts.versions = version_counts(conn, config, src, b.space).versions
                drift.mode_note += "; versions counted (no validated CHECK constraint pins them)"
        elif counts.declared_dims is None:
            drift.wrong_dims = _wrong_dims(conn, src, b.vector_column, counts.configured_dims)
        out.append(drift)
    return out


def _incremental(conn, config: PipelineConfig, src: SourceTable, b: Binding,
                 now: datetime) -> tuple[SpaceCounts | None, int | None, str]:
    """(counts, rows probed, note) from capture state, or (None, None, why a full check is needed)."""
    schema = config.project_schema
    if b.is_legacy:
        return None, None, "incremental not possible: an adopted legacy column has no capture state"
    from embedding_pipeline.embeddings.capture import trigger_name

    trig = None
    if _relation_exists(conn, schema, STATE):
        trig = conn.execute(queries.select_trigger_capture(sql.Identifier(schema, STATE)),
                            (src.name, src.ident.as_string(conn), trigger_name(src.name))).fetchone()
    if trig is None:
        return None, None, "incremental not possible: no enabled capture trigger on the source"
    proof = None
    if _relation_exists(conn, schema, "drift_history"):
        proof = conn.execute(queries.select_last_full(schema), (src.name, b.space)).fetchone()
    if proof is None:
        return None, None, "incremental not possible: no full check recorded yet"
    at, eligible, stored, stale, orphans, coverage = proof
    if at <= trig[0]:
        return None, None, f"incremental not possible: the last full check ({at:%Y-%m-%d %H:%M}) predates capture"
    if now - at > FULL_PROOF_MAX_AGE:
        return None, None, (f"incremental not possible: the last full check ({at:%Y-%m-%d %H:%M}) is older than "
                            f"{FULL_PROOF_MAX_AGE.days} days")
    if stale or orphans or coverage < 1.0:
        return None, None, (f"incremental not possible: the last full check ({at:%Y-%m-%d %H:%M}) was not clean "
                            f"(stale {stale}, orphans {orphans}, coverage {coverage:.6f})")
    n_ids, _, missing, n_stale, n_orphans, n_read = changed_counts(
        conn, config, src, b.space, sql.Identifier(schema, QUEUE), sql.Identifier(schema, "refused_rows"))
    resolved = config.space(b.space)
    table = resolved.on(src)
    counts = SpaceCounts(src.name, b.space, "table", table.qualified, expected_version=resolved.model_version,
                         configured_dims=resolved.dimensions)
    counts.declared_dims = declared_dimension(conn, table.schema, table.name, "embedding")
    # Eligible and stored rows are those of the last full check: exact counts need a scan. Missing,
    # stale and orphans are exact (the full check found none; only these rows can have changed since).
    counts.eligible, counts.stored = eligible, stored
    counts.covered, counts.stale, counts.orphans = max(eligible - missing, 0), n_stale, n_orphans
    # Rows read from the source had no trigger digest for this space (see changed_counts); when a whole space
    # lacks them, its fingerprint postdates the trigger's function: the next consume rewrites it.
    read = f"; {n_read} of them read from the source (no trigger digest for this space)" if n_read else ""
    return counts, n_ids, (f"from capture: {n_ids} changed row(s) probed on top of the full check of "
                              f"{at:%Y-%m-%d %H:%M} (eligible/stored as of then){read}")


def _relation_exists(conn, schema: str, name: str) -> bool:
    return conn.execute(db_queries.select_regclass_exists(), (sql.Identifier(schema, name).as_string(conn),)).fetchone()[0]


def _table_extras(conn, config: PipelineConfig, b: Binding, drift: SpaceDrift) -> None:
    expected = config.space(b.space).model_version
    rel = b.ident.as_string(conn)
    row = conn.execute(queries.select_vector_column_state(), (expected, rel, b.vector_column)).fetchone()
    if row is None:
        return  # the table is not created yet: counts already say 0 stored
    notnull, drift.version_pinned = row
    if not notnull:
        drift.counts.null_vectors = conn.execute(queries.count_null_vectors(b.ident, b.vector_column)).fetchone()[0]


def _wrong_dims(conn, src: SourceTable, column: str, dims: int) -> int:
    """A column declared without a dimension can mix models of different sizes: count the misfits."""
    return conn.execute(queries.count_wrong_dims(src.ident, column, dims)).fetchone()[0]


def record(conn: psycopg.Connection, schema: str, drifts: list[SpaceDrift], at: datetime | None = None) -> int:
    """Append one drift_history row per space (in the caller's transaction); return how many.

    A version-only run counted nothing else, so it leaves no row (its zeros would read as numbers). A
    full check is dated when its counts started (``started_at``), so an incremental check building on
    it covers every change committed after its snapshot.
    """
    rows = [(at or d.started_at, d.source, d.space, d.status, d.counts.eligible, d.counts.stored, d.counts.stale,
             d.counts.orphans, d.counts.null_vectors, d.counts.coverage, d.counts.version_share,
             json.dumps(d.counts.versions), d.counts.declared_dims, d.counts.configured_dims, d.queue_depth,
             d.queue_lag_seconds, d.mode) for d in drifts if d.mode != "version"]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(queries.insert_history(schema), rows)
    return len(rows)


def history(conn: psycopg.Connection, schema: str, source: str, limit: int = 2000) -> list[dict]:
    """The latest ``limit`` drift_history rows of a source, oldest first."""
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    rows = cur.execute(queries.select_history(schema), (source, limit)).fetchall()
    return rows


def quality_regression(conn: psycopg.Connection, config: PipelineConfig, source: str, space: str,
                       ndcg_now: float, *, eval_set: str = "default", report_id: int | None = None) -> dict:
    """Compare nDCG@10 now with the space's quality baseline on that eval set (``evaluation.baseline``).

    The baseline is the first stored labeled result of the space (or one an operator accepted),
    the same number the cutover gate reads; ``report_id``: the eval_reports row of ``ndcg_now``
    (``baseline_created`` says it is the baseline itself). A result regresses when it is more
    than ``config.eval.regression_margin`` below (exactly the margin is not a regression). The
    baseline is never moved by later runs: a slow slide over many nights still adds up against
    the first number. Nothing stored yet: ``baseline`` None, nothing to regress from.
    """
    ensure_schema(conn, config.project_schema)  # eval_reports, where the baseline lives (a fresh install too)
    conn.commit()
    ensure_drift_tables(conn, config.project_schema)
    margin = config.eval.regression_margin
    base = quality_baseline(conn, config.project_schema, source, space, eval_set)
    conn.commit()
    out = {"source": source, "space": space, "eval_set": eval_set, "ndcg_at_10": float(ndcg_now), "margin": margin,
           "baseline": None, "baseline_report": None, "drop": 0.0, "baseline_created": False, "regressed": False}
    if base is None:
        return out
    drop = base.ndcg_at_10 - float(ndcg_now)
    # A tolerance of 1e-12 keeps "exactly the margin" on the passing side despite float rounding.
    out.update(baseline=base.ndcg_at_10, baseline_report=base.report_id, drop=drop,
               baseline_created=report_id is not None and base.report_id == report_id, regressed=drop > margin + 1e-12)
    return out


# ---------------------------------------------------------------- checks

ERROR, WARN = "ERROR", "WARN"
# name -> (blocking, description). Blocking checks gate the cutover: a run that also
# materializes something downstream of the drift stats stops on their ERROR.
CHECKS: dict[str, tuple[bool, str]] = {
    "single_model_version": (True, "every stored vector carries its space's model_version (ERROR)"),
    "dimensions_match": (True, "declared vector dimension equals the configured one (ERROR)"),
    "coverage": (False, "embedded / eligible rows >= drift.coverage_threshold for the active space (ERROR), "
                        ">= drift.shadow_coverage_threshold for shadow spaces (WARN)"),
    "no_stale_vectors": (False, "no vector embedded from an older content (ERROR on the active space, "
                                "WARN on shadows)"),
    "no_orphans": (False, "no vector of a deleted, filtered-out or blank row (WARN: invisible to joins, costs space)"),
    "no_null_vectors": (False, "no NULL vector in a per-model table (ERROR active, WARN shadow); non-finite "
                               "values are refused by pgvector itself"),
    "queue_lag": (False, "change-capture queue lag <= drift.max_queue_lag_seconds (WARN; passes without capture)"),
}


@dataclass
class Finding:
    source: str
    space: str | None
    check: str
    severity: str
    message: str
    details: dict


@dataclass
class CheckOutcome:
    name: str
    findings: list[Finding]
    metadata: dict

    @property
    def passed(self) -> bool:
        return not self.findings

    @property
    def severity(self) -> str:
        return ERROR if any(f.severity == ERROR for f in self.findings) or not self.findings else WARN


def _reembed_fix(d: SpaceDrift) -> str:
    return f"run `embedding-pipeline reembed --source {d.source} --space {d.space}`"


def _find(d: SpaceDrift, check: str, config: PipelineConfig) -> tuple[str, dict] | None:
    """(message, numbers) when ``d`` fails ``check``; the message states table, space, numbers and the fix."""
    c, t, legacy = d.counts, d.counts.table, d.counts.storage == "legacy_column"
    if check == "single_model_version" and c.version_share < 1.0:
        foreign = sum(n for v, n in c.versions.items() if v != c.expected_version)
        fix = (f"delete them (DELETE FROM {t} WHERE model_version <> '{c.expected_version}') and {_reembed_fix(d)}"
               + ("; the CHECK constraint pinning model_version is missing: restore it" if d.version_pinned is False
                  else ""))
        return (f"{t}: {foreign} of {sum(c.versions.values())} vectors carry a model_version other than space "
                f"{d.space}'s {c.expected_version} (versions {c.versions}). Fix: {fix}",
                {"foreign": foreign, "versions": c.versions, "expected": c.expected_version,
                 "version_pinned": d.version_pinned})
    if check == "dimensions_match" and (not c.dims_ok or d.wrong_dims):
        detail = (f"is declared {c.declared_dims}-d" if not c.dims_ok
                  else f"declares no dimension and holds {d.wrong_dims} vectors that are not {c.configured_dims}-d")
        return (f"{t} {detail} but space {d.space} is configured {c.configured_dims}-d. Fix: restore the space's "
                "dimensions in the config, or register the new model under a new space name and migrate to it",
                {"declared": c.declared_dims, "configured": c.configured_dims, "wrong_dims": d.wrong_dims})
    if check == "coverage":
        threshold = config.drift.coverage_threshold if d.status == "active" else config.drift.shadow_coverage_threshold
        if c.coverage < threshold:
            fix = ("the application writes this column: fix its embedding writer for rows with NULL vectors, or cut "
                   "over to a built space") if legacy else _reembed_fix(d)
            return (f"{t}: {c.covered} of {c.eligible} eligible rows of {d.source_table} have a vector in space "
                    f"{d.space} ({100 * c.coverage:.2f}% < {100 * threshold:.2f}%, {c.missing} missing). Fix: {fix}",
                    {"covered": c.covered, "eligible": c.eligible, "missing": c.missing,
                     "coverage": round(c.coverage, 6), "threshold": threshold})
    if check == "no_stale_vectors" and c.stale:
        return (f"{t}: {c.stale} vectors of space {d.space} were embedded from an older content of their "
                f"{d.source_table} row. Fix: {_reembed_fix(d)}", {"stale": c.stale})
    if check == "no_orphans" and c.orphans:
        return (f"{t}: {c.orphans} vectors of space {d.space} belong to {d.source_table} rows that are gone, "
                f"filtered out or blank. Fix: {_reembed_fix(d)} (it deletes them)", {"orphans": c.orphans})
    if check == "no_null_vectors" and c.null_vectors and not legacy:
        return (f"{t}: {c.null_vectors} NULL vectors in space {d.space} (its NOT NULL constraint is gone). Fix: "
                f"DELETE FROM {t} WHERE embedding IS NULL, {_reembed_fix(d)} and restore NOT NULL",
                {"null_vectors": c.null_vectors})
    max_lag = config.drift.max_queue_lag_seconds
    if check == "queue_lag" and d.queue_lag_seconds is not None and d.queue_lag_seconds > max_lag:
        return (f"{d.source_table}: change-capture queue for space {d.space} lags {d.queue_lag_seconds:.0f}s "
                f"(> {max_lag:.0f}s, {d.queue_depth} queued). Fix: check the capture worker is running and keeping up",
                {"queue_lag_seconds": d.queue_lag_seconds, "queue_depth": d.queue_depth})
    return None


def _severity(d: SpaceDrift, check: str) -> str:
    if check in ("single_model_version", "dimensions_match"):
        return ERROR
    if check in ("coverage", "no_stale_vectors", "no_null_vectors"):
        return ERROR if d.status == "active" else WARN
    return WARN


def evaluate(config: PipelineConfig, drifts: list[SpaceDrift], mode: str = "full") -> list[CheckOutcome]:
    """The checks ``mode`` answers (MODE_CHECKS) over the active and shadow spaces; a check with no findings
    passed. The others are not evaluated at all: their counts were not taken."""
    outcomes = []
    for check in (c for c in CHECKS if c in MODE_CHECKS[mode]):
        findings, meta = [], {}
        for d in (d for d in drifts if d.checked):
            hit = _find(d, check, config)
            meta[d.space] = {"status": d.status, **(hit[1] if hit else {})}
            if hit:
                findings.append(Finding(d.source, d.space, check, _severity(d, check), hit[0], hit[1]))
        outcomes.append(CheckOutcome(check, findings, meta))
    return outcomes
