"""Where every source stands: the active space, the read path, and each space's state and coverage."""

from __future__ import annotations

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.cutover.switch import table_present
from embedding_pipeline.db.connection import Database
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.coverage import space_counts
from embedding_pipeline.errors import EmbeddingPipelineError
from embedding_pipeline.read_path.install import (
    search_function_name,
    served_space,
    view_name,
)
from embedding_pipeline.spaces.bindings import bindings
from embedding_pipeline.spaces.model import Binding
from embedding_pipeline.spaces.source import inspect_source


def _space_entry(conn, config: PipelineConfig, src, b: Binding) -> dict:
    entry = {"name": b.space, "status": b.status, "storage": b.storage,
             "table": f"{b.table_schema}.{b.table_name}" + (
                 f".{b.vector_column}" if b.is_legacy else ""),
             "coverage": None, "rows": None, "stale": None, "missing": None,
             "activated_at": b.activated_at, "retired_at": b.retired_at, "delete_after": b.delete_after,
             "deleted_at": b.deleted_at, "previous_space": b.previous_space}
    if b.status == "deleted" or b.space not in config.spaces:
        return entry
    if not b.is_legacy and not table_present(conn, b):
        entry["error"] = f"table {entry['table']} is missing"
        return entry
    c = space_counts(conn, config, src, b.space)
    entry.update(coverage=round(c.coverage, 6), rows=c.stored, stale=c.stale, missing=c.missing)
    return entry


def source_status(conn, config: PipelineConfig, source: str) -> dict:
    schema = config.project_schema
    out = {"source": source, "active_space": None, "previous_space": None, "rollback_available": False,
           "read_path": {"view": f"{schema}.{view_name(source)}",
                         "search_function": f"{schema}.{search_function_name(source)}", "serves": None},
           "spaces": []}
    try:
        src = inspect_source(conn, source, config.source(source))
    except EmbeddingPipelineError as e:
        out["error"] = str(e)
        return out
    rows = bindings(conn, schema, source)
    by_space = {b.space: b for b in rows}
    active = next((b for b in rows if b.status == "active"), None)
    if active is not None:
        out["active_space"] = active.space
        prev = by_space.get(active.previous_space) if active.previous_space else None
        out["previous_space"] = active.previous_space
        out["rollback_available"] = prev is not None and prev.status == "retired"
    out["read_path"]["serves"] = served_space(conn, config, source)
    out["spaces"] = [_space_entry(conn, config, src, b) for b in rows]
    cfg = config.source(source)
    for name in [*([cfg.legacy_space] if cfg.legacy_space else []), *config.spaces_for(source)]:
        if name not in by_space:
            out["spaces"].append({"name": name, "status": "not created", "storage": None, "table": None,
                                  "coverage": None, "rows": None, "stale": None, "missing": None,
                                  "delete_after": None})
    return out


def status(db: Database, config: PipelineConfig) -> list[dict]:
    """One entry per configured source: ``source``, ``active_space``, ``spaces`` (name, status,
    coverage, rows, stale, storage, delete_after, ...), the read path and whether a rollback is possible."""
    with db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        report = []
        for source in config.sources:
            report.append(source_status(conn, config, source))
            conn.rollback()  # read-only: end the snapshot per source
    return report


def format_status(report: list[dict]) -> str:
    lines = []
    for s in report:
        head = f"{s['source']}: active {s['active_space'] or '-'}"
        if s.get("previous_space"):
            head += f" (rollback to {s['previous_space']} {'available' if s['rollback_available'] else 'closed'})"
        lines.append(head)
        if s.get("error"):
            lines.append(f"  error: {s['error']}")
        for sp in s["spaces"]:
            cov = f"{100 * sp['coverage']:.2f}%" if sp.get("coverage") is not None else "-"
            extra = f", delete after {sp['delete_after']:%Y-%m-%d %H:%M}" if sp.get("delete_after") else ""
            lines.append(f"  {sp['name']:<16} {sp['status']:<11} {sp.get('storage') or '-':<13} coverage {cov:>8}, "
                         f"rows {sp.get('rows') if sp.get('rows') is not None else '-'}, "
                         f"stale {sp.get('stale') if sp.get('stale') is not None else '-'}{extra}")
    return "\n".join(lines)

