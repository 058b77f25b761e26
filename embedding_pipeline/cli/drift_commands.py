"""`drift`: the nightly drift stats and checks, now; recorded in drift_history and alerts like the nightly run.

``--no-record`` only prints (a read-only look). Alerts are recorded, not delivered: the alert
sensor of a running Dagster daemon delivers them.
"""

from __future__ import annotations

from embedding_pipeline.cli.common import EXIT_CHECK_FAILED, add_json, emit
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.drift.alerts import record_findings
from embedding_pipeline.drift.stats import (
    ERROR,
    MODES,
    collect,
    ensure_drift_tables,
    evaluate,
    queue_stats_for,
    record,
)


def drift_report(conn, config, sources: list[str], *, record_history: bool = False,
                 mode: str = "full") -> tuple[list[dict], list[str]]:
    """One entry per bound space (its stats and failed checks), and the sources with nothing bound.

    ``record_history``: append the numbers to drift_history and the failed checks to alerts, in one
    transaction per source, as the nightly asset does."""
    rows, unbound = [], []
    for source in sources:
        drifts = collect(conn, config, source, queue_stats=queue_stats_for(conn, config, source), mode=mode)
        if not drifts:
            unbound.append(source)
        outcomes = evaluate(config, drifts, mode)
        if record_history and drifts:
            with conn.transaction():
                record(conn, config.project_schema, drifts)
                record_findings(conn, config.project_schema, outcomes)
        failed: dict[str, list[dict]] = {}
        for outcome in outcomes:
            for f in outcome.findings:
                failed.setdefault(f.space, []).append({"check": f.check, "severity": f.severity, "message": f.message})
        rows += [{**d.to_json(), "failed_checks": failed.get(d.space, [])} for d in drifts]
    return rows, unbound


def _text(rows: list[dict], unbound: list[str]) -> str:
    lines = []
    for r in rows:
        versions = ", ".join(f"{v}: {n}" for v, n in r["versions"].items()) or "none"
        if r["mode"] == "version":
            lines.append(f"{r['source']} / {r['space']} [{r['status']}] {r['table']} (version only): versions "
                         f"{{{versions}}} ({100 * r['version_share']:.2f}% one version), "
                         f"dims {r['declared_dims']}/{r['configured_dims']}")
            lines += [f"  FAIL {c['severity']:5} {c['check']}: {c['message']}" for c in r["failed_checks"]]
            continue
        lines.append(
            f"{r['source']} / {r['space']} [{r['status']}, {r['mode']}] {r['table']}: coverage {100 * r['coverage']:.2f}% "
            f"({r['covered']}/{r['eligible']}), versions {{{versions}}} ({100 * r['version_share']:.2f}% one version), "
            f"stale {r['stale']}, orphans {r['orphans']}, NULL {r['null_vectors']}, "
            f"dims {r['declared_dims']}/{r['configured_dims']}")
        lines += [f"  FAIL {c['severity']:5} {c['check']}: {c['message']}" for c in r["failed_checks"]]
    lines += [f"{s}: no spaces bound yet; run `embedding-pipeline setup --source {s}`" for s in unbound]
    return "\n".join(lines)


def cmd_drift(ctx, args):
    config = ctx.config
    sources = args.source or list(config.sources)
    with ctx.db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        ensure_drift_tables(conn, config.project_schema)
        conn.commit()
        rows, unbound = drift_report(conn, config, sources, record_history=not args.no_record, mode=args.mode)
    emit(args, rows, lambda: _text(rows, unbound))
    errors = any(c["severity"] == ERROR for r in rows for c in r["failed_checks"])
    return EXIT_CHECK_FAILED if errors else 0


def register(sub):
    p = sub.add_parser("drift", help="model-version distribution, coverage, stale/orphan vectors per source and space")
    p.add_argument("--source", action="append", help="source table (repeatable; default all)")
    p.add_argument("--no-record", action="store_true",
                   help="print only; do not append to drift_history or record alerts")
    p.add_argument("--mode", choices=MODES, default="full",
                   help="full: count everything (the proof); incremental: coverage/stale/orphans from change capture "
                        "on top of the last clean full check (falls back to full, saying why); version: the "
                        "model_version distribution only")
    add_json(p)
    p.set_defaults(handler=cmd_drift)
