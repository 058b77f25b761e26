"""App column commands: app-stage, app-env, and the --app forms of cutover / rollback / status."""

from __future__ import annotations

from embedding_pipeline.cli.common import add_json, emit
from embedding_pipeline.cutover.app_env import app_env, app_status, format_app_status
from embedding_pipeline.cutover.app_flip import cutover_app, rollback_app
from embedding_pipeline.cutover.app_stage import stage


def _flipped(r: dict) -> str:
    lines = [f"app {r['app']}: columns now hold {r['space']} (was {r['previous_space']}), audit #{r['audit_id']} "
             f"by {r['actor']}; tables locked {r['lock_held_ms']} ms"]
    for s in r["sources"]:
        lines.append(f"  {s['table']}.{s['column']} = {s['space']}; {s['previous_space']} kept in "
                     f"{s['table']}.{s['previous_column']} ({s['rows_refreshed_in_flip']} rows copied in the flip)")
    if r.get("forced"):
        lines.append("  FORCED, overriding: " + ("; ".join(r.get("reasons_overridden") or []) or "nothing"))
    lines += [f"  warning: {w}" for w in r.get("warnings") or []]
    lines.append(f"  Honcho startup check: {r['validator'] if isinstance(r['validator'], str) else r['validator']}")
    lines.append(f"  restart the app with `embedding-pipeline app-env --app {r['app']}`")
    return "\n".join(lines)


def cmd_app_cutover(ctx, args):
    result = cutover_app(ctx.db, ctx.config, args.app, args.space, force=args.force, drained=args.drained,
                         provider_for=ctx.provider)
    emit(args, result, lambda: _flipped(result))


def cmd_app_rollback(ctx, args):
    result = rollback_app(ctx.db, ctx.config, args.app, drained=args.drained, provider_for=ctx.provider)
    emit(args, result, lambda: _flipped(result))


def cmd_app_stage(ctx, args):
    reports = stage(ctx.db, ctx.config, args.app, args.space, provider_for=ctx.provider)
    payload = [r.to_json() for r in reports]

    def text():
        out = []
        for r in reports:
            out.append(f"{r.source}.{r.column} ({r.space}): {r.mode} fill, {r.rows_written:,} of {r.rows_read:,} rows "
                       f"written in {r.batches} batches, index {r.index or '-'} {r.index_action}, {r.seconds}s")
            for when in ("before", "after"):
                st = getattr(r, when)
                out.append(f"  {when}: {st['total_bytes'] / 2**20:.1f} MiB, {st['dead_tuples']:,} dead tuples")
        return "\n".join(out)
    emit(args, payload, text)


def cmd_app_env(ctx, args):
    env = app_env(ctx.db, ctx.config, args.app)
    emit(args, env, lambda: "\n".join(f"{k}={v}" for k, v in env.items()))


def annotate_status(ctx, report: list[dict]) -> None:
    """Add ``app`` (name, column, the space it holds, what sits beside it) to each source an app reads."""
    if not ctx.config.apps:
        return
    with ctx.db.connect() as conn:
        apps = app_status(conn, ctx.config)
        conn.commit()
    by_source = {s["source"]: {"app": a["app"], "cutover": a["cutover"], "validator": a.get("validator"), **s}
                 for a in apps for s in a["sources"]}
    for entry in report:
        if entry["source"] in by_source:
            entry["app"] = by_source[entry["source"]]
    for a in apps:  # an app whose sources could not be read still shows, with its error
        if a.get("error"):
            for entry in report:
                if entry["source"] in ctx.config.apps[a["app"]].sources:
                    entry["app"] = {"app": a["app"], "cutover": a["cutover"], "error": a["error"]}


def status_text(report: list[dict]) -> str:
    apps: dict[str, dict] = {}
    for e in report:
        if e.get("app"):
            a = apps.setdefault(e["app"]["app"], {"app": e["app"]["app"], "cutover": e["app"]["cutover"],
                                                   "sources": [], "validator": e["app"].get("validator")})
            if e["app"].get("error"):
                a["error"] = e["app"]["error"]
            else:
                a["sources"].append(e["app"])
    for a in apps.values():
        held = {s["holds"] for s in a["sources"]}
        a["holds"] = held.pop() if len(held) == 1 else (sorted(held) or "-")
    return ("\n" + format_app_status(list(apps.values()))) if apps else ""


def register(sub):
    p = sub.add_parser("app-stage", help="add/fill/index the column of a space beside an app's own column")
    p.add_argument("--app", required=True)
    p.add_argument("--space", required=True)
    add_json(p)
    p.set_defaults(handler=cmd_app_stage)

    p = sub.add_parser("app-env", help="the app's model settings (Honcho's env) for the space its columns hold")
    p.add_argument("--app", required=True)
    add_json(p)
    p.set_defaults(handler=cmd_app_env)
