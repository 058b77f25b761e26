"""The migration plan for one target space, generated from the config and the live database.

``build_plan`` reads (never writes) the catalog and the project's tables for every source the
space is configured for: registry, binding, per-model table and its HNSW index, coverage, the
read path, change-capture triggers, the latest smoke, eval, drift and verified backup, and the
HNSW builds the re-embed engine recorded (``index_builds``, for the index time estimate). From that
state it derives a checklist (done / pending / failed per step) and ``plan_sections.render``
turns it into Markdown: Schema, Indexes, Write path, Read path, Cutover, Rollback, Deletion,
Backup, Evidence. The document holds DDL, commands and numbers only: no document text, no
credentials (URLs appear as ``"$DATABASE_URL"`` / ``"$REDIS_URL"``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from embedding_pipeline.backup.catalog import check_backup_fresh, latest_verified
from embedding_pipeline.backup.run import backup_root
from embedding_pipeline.backup.targets import tables_for_source
from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.connection import Database, table_exists
from embedding_pipeline.db.queue import STATE, capture_mode, queue_stats
from embedding_pipeline.embeddings.cost import estimate
from embedding_pipeline.embeddings.coverage import space_counts
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.evaluation.smoke import latest_smoke
from embedding_pipeline.plan import queries
from embedding_pipeline.plan.model import (
    DONE,
    FAILED,
    PENDING,
    IndexBuild,
    Plan,
    SourcePlan,
    Step,
    backup_tables,
    estimate_index_seconds,
)
from embedding_pipeline.plan.render import render
from embedding_pipeline.read_path.install import (
    search_function_name,
    served_space,
    view_name,
)
from embedding_pipeline.spaces.bindings import bindings
from embedding_pipeline.spaces.model import (
    SpaceTable,
)
from embedding_pipeline.spaces.registry import identity_diff
from embedding_pipeline.spaces.source import inspect_source


def plan_sources(config: PipelineConfig, space: str, source: str | None = None) -> list[str]:
    """The sources the space is (to be) built for; ConfigError naming the fix when there are none."""
    config.space(space)
    if source is not None:
        config.source(source)
        if space not in config.spaces_for(source):
            raise ConfigError(f"space {space!r} is not configured for source {source!r} (its spaces: "
                              f"{config.spaces_for(source)}); add it to sources.{source}.spaces")
        return [source]
    found = [s for s in config.sources if space in config.spaces_for(s)]
    if not found:
        raise ConfigError(f"space {space!r} is not configured for any source; add it to sources.<name>.spaces "
                          f"(sources: {sorted(config.sources)})")
    return found


def _one(conn, query, params=()) -> dict | None:
    return conn.cursor(row_factory=psycopg.rows.dict_row).execute(query, params).fetchone()


def _all(conn, query, params=()) -> list[dict]:
    return conn.cursor(row_factory=psycopg.rows.dict_row).execute(query, params).fetchall()


def _registered(conn, schema: str, space: str) -> dict | None:
    if not table_exists(conn, schema, "spaces"):
        return None
    return _one(conn, queries.select_registered(schema), (space,))


def _source_state(conn, db: Database, config: PipelineConfig, space: str, name: str,
                  measured: list[IndexBuild]) -> SourcePlan:
    schema = config.project_schema
    src = inspect_source(conn, name, config.source(name))
    p = SourcePlan(src, space_counts(conn, config, src, space))
    if table_exists(conn, schema, "bindings"):
        rows = bindings(conn, schema, name)
        p.binding = next((b for b in rows if b.space == space), None)
        p.active = next((b for b in rows if b.status == "active"), None)
        p.others = [b for b in rows if b.space != space]
    table = config.space(space).on(src)
    row = _one(conn, queries.select_index_def(), (schema, table.name, table.index_name))
    p.index_def = row["indexdef"] if row else None
    view = sql.Identifier(schema, view_name(name)).as_string(conn)
    row = _one(conn, queries.select_view_def(), (view,))
    p.view_def = row["def"] if row else None
    p.served = served_space(conn, config, name) if p.view_def else None
    row = _one(conn, queries.select_function_signature(), (schema, search_function_name(name)))
    p.search_fn = row["sig"] if row else None
    p.triggers = [r["tgname"] for r in _all(conn, queries.select_triggers(), (src.ident.as_string(conn),))]
    if table_exists(conn, schema, STATE):
        mode, high_water = capture_mode(conn, schema, name)
        if mode:
            p.capture = {"mode": mode, "high_water": high_water, **queue_stats(conn, schema, name)}
    # What `embedding-pipeline backup` dumps now (pg_dump --strict-names refuses tables that do not exist yet).
    p.backup_now = ([f"{t.schema}.{t.table}" for t in tables_for_source(conn, config, name)]
                    if table_exists(conn, schema, "bindings") else [src.qualified])
    if table_exists(conn, schema, "eval_reports"):
        p.eval = _one(conn, queries.select_latest_eval(schema), (name, space))
    if table_exists(conn, schema, "drift_history"):
        p.drift = _one(conn, queries.select_latest_drift(schema), (name, space))
    _backup_state(db, config, p)
    p.table_ddl = table.ddl(src.id_type).as_string(conn)
    p.index_ddl = index_ddl(table).as_string(conn)
    if src.cfg.legacy_vector_column:
        p.drop_legacy = queries.drop_column(src.ident, src.cfg.legacy_vector_column).as_string(conn)
    p.estimate = estimate_index_seconds(p.counts.eligible, config.space(space).dimensions, measured)
    return p


def index_ddl(table: SpaceTable) -> sql.Composed:
    """The statements spaces.bindings.build_index runs (its SET is LOCAL to the build's transaction)."""
    return queries.index_build(table.space.index.maintenance_work_mem, table.space.index.parallel_workers,
                              table.index_ddl())


def _backup_state(db: Database, config: PipelineConfig, p: SourcePlan) -> None:
    root = backup_root(db, config.backup)
    p.backup = latest_verified(root, p.name)
    p.backup_check = check_backup_fresh(root, p.name, config.backup.max_age_hours,
                                        required_tables=backup_tables(config, p))


def drift_problems(row: dict) -> list[str]:
    """What is unclean in one drift_history row of the target (coverage is its own step)."""
    problems = []
    if row["version_share"] < 1:
        problems.append(f"model versions mixed ({row['versions']})")
    for key in ("stale", "orphans", "null_vectors"):
        if row[key]:
            problems.append(f"{row[key]:,} {key.replace('_', ' ')}")
    if row["declared_dims"] is not None and row["declared_dims"] != row["configured_dims"]:
        problems.append(f"declared {row['declared_dims']}-d, configured {row['configured_dims']}-d")
    return problems


def checklist(config: PipelineConfig, space: str, registered: dict | None, smoke: dict | None,
              p: SourcePlan) -> list[Step]:
    cfg = config.space(space)
    c = p.counts
    steps = []
    if registered is None:
        steps.append(Step("space registered", PENDING, f"run `embedding-pipeline setup --source {p.name}`"))
    elif registered["identity"] != cfg.identity():
        diff = "; ".join(identity_diff(registered["identity"], cfg.identity()))
        steps.append(Step("space registered", FAILED, f"registered with a different identity ({diff}); "
                                                      "register the new model under a new space name"))
    else:
        steps.append(Step("space registered", DONE, f"{registered['model_version']}"))
    table = cfg.on(p.source).qualified
    created = c.declared_dims is not None
    steps.append(Step("table created", DONE if created else PENDING,
                      table if created else f"{table} does not exist; `embedding-pipeline setup --source {p.name}`"))
    cov = f"{c.covered:,} of {c.eligible:,} eligible rows ({100 * c.coverage:.2f}%), {c.stale:,} stale"
    if created and not c.dims_ok:
        steps.append(Step("coverage 100%", FAILED, f"{table} is {c.declared_dims}-d, the space {c.configured_dims}-d"))
    elif created and c.version_share < 1:
        steps.append(Step("coverage 100%", FAILED, f"{table} holds other model versions: {c.versions}"))
    elif created and c.covered == c.eligible and c.stale == 0:
        steps.append(Step("coverage 100%", DONE, cov))
    else:
        steps.append(Step("coverage 100%", PENDING,
                          f"{cov}; `embedding-pipeline reembed --source {p.name} --space {space}`"))
    steps.append(Step("index built", DONE if p.index_def else PENDING,
                      cfg.on(p.source).index_name if p.index_def else "built by the re-embed run after its bulk load"))
    steps.append(_smoke_step(config, space, smoke))
    ok, reason = p.backup_check
    steps.append(Step("backup verified & fresh", DONE if ok else (PENDING if p.backup is None else FAILED), reason))
    steps.append(_eval_step(p, space))
    if p.drift is None:
        steps.append(Step("drift clean", PENDING, f"no drift check yet; `embedding-pipeline drift --source {p.name}`"))
    else:
        problems = drift_problems(p.drift)
        steps.append(Step("drift clean", FAILED if problems else DONE,
                          "; ".join(problems) if problems else f"checked {p.drift['at'].isoformat(timespec='minutes')}"))
    status = p.binding.status if p.binding else None
    steps.append(Step("cutover done", DONE if status == "active" else PENDING,
                      f"binding {status or 'missing'}; active space: {p.active.space if p.active else 'none'}"))
    return steps


def _smoke_step(config: PipelineConfig, space: str, smoke: dict | None) -> Step:
    fix = f"`embedding-pipeline smoke --space {space}`"
    if smoke is None:
        return Step("smoke passed", PENDING, f"no smoke result yet; {fix}")
    if smoke.get("model_version") != config.space(space).model_version:
        return Step("smoke passed", PENDING, f"the stored smoke ({smoke.get('at')}) was of another identity; {fix}")
    if smoke.get("ok"):
        return Step("smoke passed", DONE, f"{smoke['dims']}-d, p95 {smoke['p95_ms']} ms, {smoke['endpoint_class']} "
                                          f"endpoint, at {smoke['at']}")
    why = smoke.get("reason") or smoke.get("error") or (
        "batch and single vectors disagree" if not smoke.get("batch_consistent") else "dimension mismatch")
    return Step("smoke passed", FAILED, f"{'blocked: ' if smoke.get('blocked') else ''}{why}")


def _eval_step(p: SourcePlan, space: str) -> Step:
    fix = f"materialize `evaluation/shadow_{space.replace('-', '_')}` for partition `{p.name}` (job `shadow_eval`)"
    if p.eval is None:
        return Step("eval gate passed", PENDING, f"no shadow evaluation yet; {fix}")
    what = f"report #{p.eval['id']} ({p.eval['kind']}, vs {p.eval['active_space']})"
    if p.eval["gate_passed"] is True:
        if p.active and p.active.space not in (space, p.eval["active_space"]):
            return Step("eval gate passed", PENDING, f"{what} compared against a space no longer active; {fix}")
        return Step("eval gate passed", DONE, what)
    if p.eval["gate_passed"] is False:
        return Step("eval gate passed", FAILED, f"{what} did not pass its gate")
    return Step("eval gate passed", PENDING, f"{what} has no gate decision (unlabeled); run a labeled eval")


RECENT_INDEX_BUILDS = 200


def measured_index_builds(conn: psycopg.Connection, schema: str) -> list[IndexBuild]:
    """The newest HNSW builds the re-embed engine recorded in ``<schema>.index_builds``."""
    if not table_exists(conn, schema, "index_builds"):
        return []
    rows = conn.execute(queries.select_index_builds(schema), (RECENT_INDEX_BUILDS,)).fetchall()
    return [IndexBuild(int(n), int(dims), float(seconds),
                       f"measured: {int(n):,} x {dims} took {float(seconds):.1f} s "
                       f"(re-embed of {source} into {space}, {at.astimezone(UTC):%Y-%m-%d %H:%M} UTC)")
            for source, space, n, dims, seconds, at in rows]


def build_plan(db: Database, config: PipelineConfig, space: str, source: str | None = None, *,
               measured: list[IndexBuild] = (), now: datetime | None = None, provider_for=None) -> Plan:
    """Read the live state, derive the checklist and render the Markdown (not yet written).

    Index build times are scaled from ``measured`` plus the builds recorded in ``index_builds``.

    ``provider_for(space)`` lends a local model's tokenizer to the cost estimate; remote spaces
    (and plans without it) count characters per token, so a plan never calls an endpoint."""
    names = plan_sources(config, space, source)
    local = config.space(space).transport == "sentence-transformers"
    provider = provider_for(space) if provider_for is not None and local else None
    with db.connect() as conn:
        conn.read_only = True
        registered = _registered(conn, config.project_schema, space)
        smoke = latest_smoke(conn, config.project_schema, space)
        builds = [*measured, *measured_index_builds(conn, config.project_schema)]
        states = [_source_state(conn, db, config, space, n, builds) for n in names]
        for p in states:
            table = config.space(space).on(p.source)
            if table_exists(conn, table.schema, table.name):
                p.cost = estimate(conn, p.source, table, provider, smoke=smoke)
        conn.rollback()
    for p in states:
        p.steps = checklist(config, space, registered, smoke, p)
    plan = Plan(space, config, now or datetime.now(UTC), registered, smoke, states)
    plan.markdown = render(plan)
    return plan


def write_plan(db: Database, plan: Plan) -> Path:
    """Write the Markdown under ``<home>/reports/plans/`` and return its path."""
    folder = db.home / "reports" / "plans"
    folder.mkdir(parents=True, exist_ok=True)
    scope = plan.space if len(plan.sources) != 1 else f"{plan.space}--{plan.sources[0].name}"
    path = folder / f"{scope}-{plan.generated_at:%Y%m%dT%H%M%SZ}.md"
    path.write_text(plan.markdown)
    plan.path = path
    return path
