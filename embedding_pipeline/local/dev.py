"""Run the Dagster UI and daemon (`dagster dev`) against the Postgres-backed instance.

DAGSTER_HOME is a folder in the state directory holding a copy of the repo's dagster.yaml and
`.nux/nux.yaml` (so the first-visit pop-up stays away). `dagster dev` runs in its own process
group: started in the background it would ignore SIGINT, so Ctrl-C here is forwarded to the
whole group as SIGTERM, and the group is killed if it does not stop in time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from embedding_pipeline.config import state_dir
from embedding_pipeline.db.connection import Database

REPO_FILES = Path(__file__).resolve().parents[1]


def prepare_dagster_home(db: Database, env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for any Dagster process of this project (dev, demo, tests)."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get("DAGSTER_HOME") or state_dir(env) / "dagster_home")
    (home / ".nux").mkdir(parents=True, exist_ok=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    source = Path.cwd() / "dagster.yaml"
    if not source.exists():
        source = REPO_FILES / "dagster.yaml"
    shutil.copyfile(source, home / "dagster.yaml")
    env["DAGSTER_HOME"] = str(home)
    env["EMBEDDING_PIPELINE_DAGSTER_PG_URL"] = db.dagster_url(env)
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


def dagster_dev_command(host: str, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("dagster")
    workspace = Path.cwd() / "workspace.yaml"
    if not workspace.exists():
        workspace = REPO_FILES / "workspace.yaml"
    return [str(exe), "dev", "-w", str(workspace), "-h", host, "-p", str(port)]


def start_dagster_dev(env: dict[str, str], host: str = "127.0.0.1", port: int = 3000, **popen) -> subprocess.Popen:
    return subprocess.Popen(dagster_dev_command(host, port), env=env, start_new_session=True, **popen)


def stop_process_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def run_dev(db: Database, host: str, port: int) -> int:
    env = prepare_dagster_home(db)
    proc = start_dagster_dev(env, host, port)
    print(f"Dagster UI on http://{host}:{port} (Ctrl-C stops it)", flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_process_group(proc)
        return 0
    finally:
        stop_process_group(proc)
