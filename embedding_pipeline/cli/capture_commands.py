"""Change capture commands: enable | disable | status | consume."""

from __future__ import annotations

from embedding_pipeline.cli.common import add_json, emit
from embedding_pipeline.db.queue import MODES
from embedding_pipeline.embeddings.capture import (
    capture_status,
    consume,
    disable_capture,
    enable_capture,
)
from embedding_pipeline.errors import ConfigError


def _one_source(ctx, args) -> str:
    if not args.source:
        raise ConfigError(f"`capture {args.action}` needs --source NAME; "
                          f"configured sources: {sorted(ctx.config.sources)}")
    ctx.config.source(args.source)  # unknown names fail here, with the list
    return args.source


def _line(s: dict) -> str:
    if not s.get("enabled"):
        state = "capture off"
    elif s["mode"] == "trigger":
        state = f"trigger since {s['enabled_at']:%Y-%m-%d %H:%M:%S%z}" + ("" if s["trigger_installed"]
                                                                       else " (TRIGGER MISSING: run capture enable)")
        if s.get("digests_missing"):
            state += (f" (no queue digests for {', '.join(s['digests_missing'])} yet: the next consume or "
                      "capture enable adds them)")
    else:
        state = f"cursor, high-water mark {s['high_water']}, last reconcile {s['reconciled_at']}"
    warnings = "".join(f"\n  warning: {w}" for w in s.get("warnings", []))
    return f"{s['source']}: {state}; {s['queue_depth']} queued, lag {s['queue_lag_seconds']:.0f}s{warnings}"


def cmd_capture(ctx, args):
    config = ctx.config
    if args.action == "status":
        sources = [args.source] if args.source else sorted(config.sources)
        with ctx.db.connect() as conn:
            rows = [capture_status(conn, config, s) for s in sources]
        emit(args, rows, lambda: "\n".join(_line(r) for r in rows))
    elif args.action == "enable":
        with ctx.db.connect() as conn:
            s = enable_capture(conn, config, _one_source(ctx, args), mode=args.mode)
        emit(args, s, lambda: _line(s))
    elif args.action == "disable":
        with ctx.db.connect() as conn:
            s = disable_capture(conn, config, _one_source(ctx, args))
        emit(args, s, f"{s['source']}: capture {'disabled' if s['disabled'] else 'was not enabled'}; trigger and "
                      f"function removed, {s['queue_depth']} entries left queued")
    elif args.action == "consume":
        source = _one_source(ctx, args)
        r = consume(ctx.db, config, source, ctx.provider, limit=args.limit)
        payload = {k: v for k, v in r.items() if k != "entry_ids"}
        emit(args, payload, lambda: f"{source}: {r['claimed']} entries ({r['rows']} rows) re-embedded into "
                                    f"{sorted(r['spaces']) or 'no table space'}"
                                    + (f"; deferred: {r['deferred']}" if r["deferred"] else ""))


def register(sub):
    from embedding_pipeline.db.queue import queue_stats_hook
    from embedding_pipeline.drift import stats as drift

    # Building the CLI is its composition point: `drift` then reports queue depth and lag per source.
    drift.set_queue_stats_hook(queue_stats_hook)
    p = sub.add_parser("capture", help="change capture during a migration: enable | disable | status | consume")
    p.add_argument("action", choices=["enable", "disable", "status", "consume"])
    p.add_argument("--source", help="source table (status: default all)")
    p.add_argument("--mode", choices=list(MODES), default="auto",
                   help="enable: trigger, cursor on updated_at_column, or auto (trigger, else cursor)")
    p.add_argument("--limit", type=int, default=1000, help="consume: queue entries per transaction")
    add_json(p)
    p.set_defaults(handler=cmd_capture)
