"""`smoke` (evidence per model) and `plan` (the migration plan from the live system)."""

from __future__ import annotations

import sys

from embedding_pipeline.cli.common import EXIT_CHECK_FAILED, add_json, emit
from embedding_pipeline.evaluation.smoke import (
    DEFAULT_CALLS,
    ensure_smoke_tables,
    run_smoke,
    store_smoke,
    summary,
)
from embedding_pipeline.plan.gather import build_plan, write_plan


def cmd_smoke(ctx, args):
    config = ctx.config
    result = run_smoke(args.space, config.space(args.space), ctx.provider, calls=args.calls)
    if not args.no_store:
        with ctx.db.connect() as conn:
            ensure_smoke_tables(conn, config.project_schema)
            store_smoke(conn, config.project_schema, result)
    emit(args, result, lambda: f"smoke {args.space}: {summary(result)}")
    return 0 if result["ok"] else EXIT_CHECK_FAILED


def cmd_plan(ctx, args):
    plan = build_plan(ctx.db, ctx.config, args.space, args.source, provider_for=ctx.provider)
    path = write_plan(ctx.db, plan)
    emit(args, plan.to_json(), plan.markdown)
    if not getattr(args, "json", False):
        print(f"plan written to {path}", file=sys.stderr)


def register(sub):
    p = sub.add_parser("smoke", help="embed sentinel texts: dimensions, p50/p95 latency, batch consistency, endpoint")
    p.add_argument("--space", required=True)
    p.add_argument("--calls", type=int, default=DEFAULT_CALLS, help=f"single-text calls timed (default {DEFAULT_CALLS})")
    p.add_argument("--no-store", action="store_true", help="do not record the result in the database")
    add_json(p)
    p.set_defaults(handler=cmd_smoke)

    p = sub.add_parser("plan", help="the migration plan to a space, from the config and the live database")
    p.add_argument("--space", required=True, help="the target space")
    p.add_argument("--source", help="one source (default: every source the space is configured for)")
    add_json(p)
    p.set_defaults(handler=cmd_plan)
