"""The demo's re-embed runs: Dagster in-process execution, in a child process the demo can stop.

Why a child process: while a run executes in process, Dagster owns SIGINT and SIGTERM
(``capture_interrupts``). One that arrives inside a step is raised there and, because the re-embed
assets have a ``RetryPolicy``, turned into a retry of the step (``op_execution_error_boundary``
"respects retry policy when interrupts occur"); one that arrives between steps is recorded, never
looked at by the in-process executor, and dropped when the run ends. Either way a Ctrl-C during the
demo's re-embed was swallowed and the demo ran on to the end.

So the demo (the parent) keeps its own signal handling and runs each Dagster run here, in a child in
its own session (a terminal's Ctrl-C reaches only the parent). On an interrupt the parent kills the
child's process group with SIGKILL (a SIGTERM would only make Dagster retry the step) and marks the
run canceled in the instance, so the UI does not show it running forever. Killing is safe: a
re-embed commits whole batches (a killed one rolls back), builds its index in one transaction, holds
session-level locks, and a rerun of the partition resumes from what was committed. The child also
asks the kernel to kill it when the parent dies (Linux), so not even a SIGKILLed demo leaves it.

Child: ``python -m embedding_pipeline.cli.demo_runs SOURCE SPACE... --run-id ID --result FILE --parent PID``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

from embedding_pipeline.config import state_dir


def materialize_in_process(source: str, spaces: list[str], run_id: str) -> dict:
    """One Dagster run of the re-embed assets of ``spaces`` for partition ``source``, in this process."""
    import dagster as dg

    from embedding_pipeline.defs.embeddings.assets import reembed_key

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
        result = job.execute_in_process(instance=instance, partition_key=source, run_config=quiet, run_id=run_id)
    if not result.success:
        raise RuntimeError(f"Dagster run {result.run_id} failed")
    return {"run_id": result.run_id, "materializations": [
        {"space": by_key[e.asset_key], **{k: v.value for k, v in e.materialization.metadata.items()}}
        for e in result.get_asset_materialization_events()]}


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the parent dies (Linux only; elsewhere the parent's stop is all)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # it died before the request was in place
        os._exit(130)


def main(argv: list[str] | None = None) -> int:
    from embedding_pipeline.cli import configure_logging

    p = argparse.ArgumentParser(prog="python -m embedding_pipeline.cli.demo_runs")
    p.add_argument("source")
    p.add_argument("spaces", nargs="+")
    p.add_argument("--run-id", required=True)
    p.add_argument("--result", required=True, type=Path)
    p.add_argument("--parent", type=int, required=True)
    args = p.parse_args(argv)
    _die_with_parent(args.parent)
    configure_logging()
    try:  # model-loading progress bars say nothing a person needs here
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    result = materialize_in_process(args.source, args.spaces, args.run_id)
    args.result.write_text(json.dumps(result, default=str))
    return 0


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (the unwaited leader keeps its pid, so the group id was not reused)
    proc.wait()


def _mark_canceled(run_id: str) -> None:
    """The killed child never ended its run: say so in the instance, as Dagster's own cancel would."""
    import dagster as dg

    try:
        with dg.DagsterInstance.get() as instance:
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                instance.report_run_canceled(run, "The demo was interrupted and stopped this run's process; "
                                                  "rerunning the partition resumes from the committed batches.")
    # Whatever fails here (the instance's database, Dagster itself) must not replace the interrupt being
    # handled: a run left showing STARTED is cosmetic, a traceback instead of a clean exit 130 is not.
    except Exception as e:  # noqa: BLE001
        print(f"   could not mark Dagster run {run_id[:8]} canceled: {e}", file=sys.stderr, flush=True)


def dagster_materialize(ctx, config_path: str | None = None):
    """The demo's ``Materialize``: each run in a child process (see the module docstring), on the
    Postgres-backed Dagster instance the UI reads."""

    def materialize(source: str, spaces: list[str]) -> dict:
        from embedding_pipeline.local.dev import prepare_dagster_home

        env = prepare_dagster_home(ctx.db)
        # This process reads the instance too (to mark an interrupted run canceled).
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "EMBEDDING_PIPELINE_DAGSTER_PG_URL")})
        if config_path:  # the code location loads its config from the environment
            env["EMBEDDING_PIPELINE_CONFIG"] = str(Path(config_path).resolve())
        run_id = str(uuid.uuid4())
        home = state_dir(env)
        home.mkdir(parents=True, exist_ok=True)
        result = home / f"demo-run-{run_id}.json"
        proc = None
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "embedding_pipeline.cli.demo_runs", source, *spaces, "--run-id", run_id,
                 "--result", str(result), "--parent", str(os.getpid())],
                env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            code = proc.wait()
        except BaseException:
            # Interrupted (or failed) while the run executes: nothing of it may outlive the demo. (A child
            # forked just before an interrupt, with ``proc`` not yet set, dies with this process instead.)
            if proc is not None:
                _kill_group(proc)
            _mark_canceled(run_id)
            raise
        finally:
            result_text = result.read_text() if result.exists() else None
            result.unlink(missing_ok=True)
        if code != 0 or result_text is None:
            raise RuntimeError(f"Dagster run {run_id} failed (exit {code}); its log is above")
        return json.loads(result_text)

    return materialize


if __name__ == "__main__":
    sys.exit(main())
