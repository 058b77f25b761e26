"""`embedding-pipeline backup --source NAME [--json]`: the runbook's backup-before step."""

from __future__ import annotations

from embedding_pipeline.backup.targets import backup_source
from embedding_pipeline.cli.common import EXIT_CHECK_FAILED, add_json, emit


def cmd_backup(ctx, args):
    results = []
    for source in args.source or list(ctx.config.sources):
        report, removed = backup_source(ctx.db, ctx.config, source, redis_url=args.redis_url)
        data = report.to_json()
        data["retention_removed"] = [str(p) for p in removed]
        results.append(data)

    def text():
        out = []
        for d in results:
            out.append(f"{d['source']}: {'VERIFIED' if d['verified'] else 'NOT VERIFIED'} {d['manifest']}")
            out += [f"  {t['schema']}.{t['table']}: {t['rows']} rows, checksum {t['checksum']}" for t in d["tables"]]
            out += ["  backup:"] + [f"    {c}" for c in d["backup_commands"]]
            out += ["  restore:"] + [f"    {c}" for c in d["restore_commands"]]
        return "\n".join(out)

    emit(args, results[0] if len(results) == 1 else results, text)
    return 0 if all(d["verified"] for d in results) else EXIT_CHECK_FAILED


def register(sub):
    p = sub.add_parser("backup", help="pg_dump (+ Redis RDB) a source and its embedding tables, verified by restore")
    p.add_argument("--source", action="append", help="source table (repeatable; default all)")
    p.add_argument("--redis-url", help="Redis to snapshot too (default: $REDIS_URL)")
    add_json(p)
    p.set_defaults(handler=cmd_backup)
