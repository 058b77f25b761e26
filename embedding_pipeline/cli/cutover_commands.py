"""Cutover, rollback, deletion, status and search commands."""

from __future__ import annotations

from embedding_pipeline.cli import app_commands
from embedding_pipeline.cli.common import add_json, emit
from embedding_pipeline.cutover.deletion import delete_retired
from embedding_pipeline.cutover.status import format_status, status
from embedding_pipeline.cutover.switch import cutover, rollback
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.read_path.search import search


def _switched(r: dict) -> str:
    lines = [f"{r['source']}: active space is now {r['space']} (was {r['previous_space'] or '-'}), "
             f"audit #{r['audit_id']} by {r['actor']}"]
    if r.get("previous_delete_after"):
        lines.append(f"  {r['previous_space']} is retired; its table may be deleted after "
                     f"{r['previous_delete_after']:%Y-%m-%d %H:%M %Z}; roll back with "
                     f"`embedding-pipeline rollback --source {r['source']}` until then")
    if r.get("forced"):
        lines.append("  FORCED, overriding: " + ("; ".join(r.get("reasons_overridden") or []) or "nothing"))
    lines += [f"  warning: {w}" for w in r.get("warnings") or []]
    return "\n".join(lines)


def cmd_cutover(ctx, args):
    if args.app:  # the app's own columns (apps.<app>.cutover: column)
        return app_commands.cmd_app_cutover(ctx, args)
    if not args.source:
        raise ConfigError("cutover needs --source S (the project's view) or --app A (an app's columns)")
    result = cutover(ctx.db, ctx.config, args.source, args.space, force=args.force, provider_for=ctx.provider)
    emit(args, result, lambda: _switched(result))


def cmd_rollback(ctx, args):
    if args.app:
        return app_commands.cmd_app_rollback(ctx, args)
    if not args.source:
        raise ConfigError("rollback needs --source S or --app A")
    result = rollback(ctx.db, ctx.config, args.source)
    emit(args, result, lambda: _switched(result))


def cmd_status(ctx, args):
    report = status(ctx.db, ctx.config)
    app_commands.annotate_status(ctx, report)  # per source: the app column and the space it holds
    emit(args, report, lambda: format_status(report) + app_commands.status_text(report))


def cmd_delete_retired(ctx, args):
    result = delete_retired(ctx.db, ctx.config, dry_run=True if args.dry_run else None)

    def text():
        head = "dry run (deletion_enabled is false or --dry-run):" if result["dry_run"] else "deletion:"
        rows = [f"  {d['source']}/{d['space']}: {d['decision']}" + (f" - {'; '.join(d['reasons'])}" if d["reasons"]
                                                                   else "") for d in result["decisions"]]
        return "\n".join([head, *(rows or ["  no retired spaces"])])
    emit(args, result, text)


def cmd_search(ctx, args):
    result = search(ctx.db, ctx.config, args.source, args.query, k=args.k, provider_for=ctx.provider)
    payload = result.to_json()
    # A lazy-mode source answers with a fusion of two spaces (scores, not distances).
    via = payload.get("space") or f"{payload.get('old_space')} + {payload.get('new_space') or '-'}"
    emit(args, payload, lambda: "\n".join(
        [f"{args.source} via space {via}:"]
        + [f"  {h['rank']:>3}. {h['source_id']}  {'distance' if 'distance' in h else 'score'} "
           f"{h.get('distance', h.get('score')):.4f}" for h in payload["hits"]]))


def register(sub):
    p = sub.add_parser("cutover", help="make a space the active one for a source (gated; one transaction)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--source")
    who.add_argument("--app", help="flip the app's own columns (apps.<app>.cutover: column) for all its sources")
    p.add_argument("--space", required=True)
    p.add_argument("--force", action="store_true",
                   help="skip the gates (backup, coverage, eval, validator); recorded with who in the audit table")
    p.add_argument("--drained", action="store_true",
                   help="with --app: the app is stopped (needed for a same-dimension flip while its sessions show)")
    add_json(p)
    p.set_defaults(handler=cmd_cutover)

    p = sub.add_parser("rollback", help="switch a source back to its previous space (until that space is deleted)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--source")
    who.add_argument("--app", help="flip the app's own columns back (one transaction for all its sources)")
    p.add_argument("--drained", action="store_true", help="with --app: the app is stopped")
    add_json(p)
    p.set_defaults(handler=cmd_rollback)

    p = sub.add_parser("status", help="active space, spaces, coverage and retention per source")
    add_json(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("delete-retired", help="drop retired space tables past retention (dry run unless enabled)")
    p.add_argument("--dry-run", action="store_true", help="report only, even when deletion_enabled is true")
    add_json(p)
    p.set_defaults(handler=cmd_delete_retired)

    p = sub.add_parser("search", help="nearest rows of a source in its active space")
    p.add_argument("--source", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("-k", type=int, default=10)
    add_json(p)
    p.set_defaults(handler=cmd_search)
