"""A real Dagster + Celery deployment on loopback: Postgres-backed instance with the run queue,
`dagster-daemon`, a Redis broker and `dagster-celery` workers, each in its own process group.

The pieces are the documented ones (docs/scaling.md): the repo's dagster.yaml (QueuedRunCoordinator),
workspace.yaml, `embedding_pipeline/celery.yaml` for the executor and the workers, and
`dagster job backfill` to launch a backfill of the `reembed_celery` job.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from embedding_pipeline.defs.scaling import CELERY_CONFIG
from embedding_pipeline.local.dev import stop_process_group

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BROKER_ENV = "EMBEDDING_PIPELINE_CELERY_BROKER_URL"


def worker_config(path: Path, **transport: object) -> Path:
    """The packaged celery.yaml with ``broker_transport_options`` overridden (a test's short visibility timeout)."""
    cfg = yaml.safe_load(CELERY_CONFIG.read_text())
    cfg["execution"]["config"]["config_source"]["broker_transport_options"].update(transport)
    path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass
class Cluster:
    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = (self.logs / f"{name}.log").open("ab")
        # Own session: the process and everything it forks (celery's pool, the daemon's code server and
        # run workers) share one process group, killed as a unit.
        proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str, config_yaml: Path) -> subprocess.Popen:
        """`dagster-celery worker start` named ``name@<host>``: one step at a time (prefork, concurrency 1),
        the code location imported before the pool forks so a step does not pay for it."""
        return self._start(name, [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                                  "-y", str(config_yaml), "-n", name, "-q", "dagster",
                                  "-i", "embedding_pipeline.definitions", "--", "--concurrency=1"])

    def start_daemon(self) -> subprocess.Popen:
        """`dagster-daemon run`: dequeues queued runs (run queue), launches them, runs backfills."""
        return self._start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")])

    def backfill(self, job: str, partitions: list[str]) -> str:
        """`dagster job backfill`: one queued run per partition; returns the backfill id."""
        done = subprocess.run([str(BIN / "dagster"), "job", "backfill", "-w", str(REPO / "workspace.yaml"),
                               "-j", job, "--partitions", ",".join(partitions), "--noprompt"],
                              env=self.env, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
        found = re.search(r"Launched backfill job `([^`]+)`", done.stdout)
        assert done.returncode == 0 and found, f"backfill failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
        return found.group(1)

    def kill(self, name: str) -> None:
        """SIGKILL a whole process group: no handler, no cleanup, no goodbye to the broker."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            stop_process_group(proc, timeout=20)

    def wait_ready(self, name: str, pattern: str, timeout: float = 120.0) -> None:
        """Until ``pattern`` appears in the process's log (e.g. celery's "ready.")."""
        deadline = time.monotonic() + timeout
        while pattern not in self.log(name, 200_000):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {timeout:.0f}s:\n{self.log(name)}")
            time.sleep(0.5)
