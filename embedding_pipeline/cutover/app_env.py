"""What an application needs to know after a flip: its environment (``app-env``) and its status.

``app_env`` prints Honcho's variables (``EMBEDDING_VECTOR_DIMENSIONS``, ``EMBEDDING_MODEL_CONFIG__*``)
for the space the app's columns hold now, before and after a rollback alike.
"""

from __future__ import annotations

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.cutover.app_flip import honcho_validator
from embedding_pipeline.cutover.app_stage import (
    HONCHO_TRANSPORT,
    AppSource,
    app_sources,
)
from embedding_pipeline.db.connection import Database, declared_dimension
from embedding_pipeline.errors import ConfigError, DatabaseError
from embedding_pipeline.spaces.columns import (
    state_rows,
)
from embedding_pipeline.spaces.source import inspect_source


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
