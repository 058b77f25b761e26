"""Fixtures of the drift tests: a seeded template database per module, a copy per test, a webhook."""

from __future__ import annotations

import threading
from http.server import HTTPServer

import pytest
from psycopg.conninfo import conninfo_to_dict

from embedding_pipeline.config import load_config
from embedding_pipeline.db.connection import Database
from embedding_pipeline_tests.support.configs import TEST_CONFIG
from embedding_pipeline_tests.support.databases import (
    create_database,
    drop_database,
    scratch_database,
    vector_database,
)
from embedding_pipeline_tests.support.drift_env import (
    SPACE,
    Capture,
    seed,
    write_config,
)


@pytest.fixture(scope="module")
def providers(provider_cache):
    """The legacy 384-d MiniLM space and the 256-d built one, from the session's cache."""
    packaged = load_config(TEST_CONFIG)
    return {name: provider_cache.get(packaged, name) for name in ("minilm", SPACE)}


@pytest.fixture(scope="module")
def seeded_template(pg_admin_url, providers, tmp_path_factory):
    """One database seeded for real (40 documents embedded into minilm-256), cloned by each test."""
    with scratch_database(pg_admin_url, "drift_seed") as name:
        home = tmp_path_factory.mktemp("drift_seed")
        seed(vector_database(pg_admin_url, name, home), load_config(write_config(TEST_CONFIG, home)), providers)
        yield name


@pytest.fixture
def seeded(db, pg_admin_url, seeded_template) -> Database:
    """The test's fresh database, re-created as a copy of the seeded template (same name and URL)."""
    name = conninfo_to_dict(db.url)["dbname"]
    drop_database(pg_admin_url, name)
    create_database(pg_admin_url, name, template=seeded_template)
    return db


@pytest.fixture
def webhook():
    """A Slack-like webhook on loopback recording each POST; `.status` sets its answer."""
    server = HTTPServer(("127.0.0.1", 0), Capture)
    server.captured, server.status = [], 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}/services/T000/B000/SECRET-TOKEN"
    yield server
    server.shutdown()
    server.server_close()
