"""Fixtures of the distributed-run tests: a deterministic slow embeddings server, a config of one source
in two shards pointed at it, the vector database the cluster writes plus a reference database, and the cluster
(Redis broker, Dagster instance with the run queue, daemon, Celery workers), all stopped at the end."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from embedding_pipeline.config import PipelineConfig, load_config
from embedding_pipeline.db.connection import DAGSTER_DATABASE_URL_ENV, Database
from embedding_pipeline.local.dev import prepare_dagster_home

from embedding_pipeline_tests.support.celery_cluster import (
    BIN,
    BROKER_ENV,
    REPO,
    Cluster,
)
from embedding_pipeline_tests.support.dagster_ui import ui_databases
from embedding_pipeline_tests.support.databases import scratch_database, vector_database
from embedding_pipeline_tests.support.embedding_server import EmbeddingServer
from embedding_pipeline_tests.support.redis_server import running_redis

SPACE = "det"
SOURCE = "docs_a"
SHARDS = 2


@pytest.fixture
def embedding_server():
    """Deterministic vectors; the test sets ``delay`` (0 for the reference run, >0 so a step is surely in flight)."""
    with EmbeddingServer(dimensions=64) as server:
        yield server


def scaling_config_text(base_url: str, sources=(SOURCE,), batch_size: int = 4, shards: int = SHARDS) -> str:
    """Sources shaped like `documents` (text ids, soft delete), split into ``shards``, and one 64-d space
    on the loopback server.

    Small requests (``batch_size`` texts) make a commit (16 requests' worth of rows) come early in a step."""
    src = {name: {"schema": "public", "table": name, "id_column": "id", "text_column": "content",
                  "row_filter": "deleted_at IS NULL", "updated_at_column": "updated_at",
                  "active_space": SPACE, "spaces": [SPACE], "shards": shards} for name in sources}
    space = {"transport": "openai", "model": "det-64", "base_url": base_url, "dimensions": 64,
             "dimensions_mode": "never", "api_key_env": "DET_API_KEY", "batch_size": batch_size,
             "concurrency": 1, "timeout_s": 60, "description": "deterministic loopback server (tests, bench)"}
    return yaml.safe_dump({"project_schema": "embedding_pipeline", "sources": src, "spaces": {SPACE: space}})


@pytest.fixture
def scaling_config(tmp_path, embedding_server, monkeypatch) -> tuple[Path, PipelineConfig]:
    path = tmp_path / "pipeline.yaml"
    path.write_text(scaling_config_text(embedding_server.url))
    monkeypatch.setenv("EMBEDDING_PIPELINE_CONFIG", str(path))
    return path, load_config(path)


@dataclass
class ClusterDatabases:
    vectors: Database  # what the cluster writes
    reference: Database  # what a single-process reembed() writes
    dagster_url: str  # the instance's own database (psycopg2 URL)


@pytest.fixture
def cluster_databases(pg_admin_url, pg_home, tmp_path) -> ClusterDatabases:
    with ui_databases(pg_admin_url, tmp_path / "vectors") as (vectors, dagster_url), \
            scratch_database(pg_admin_url, "ref") as ref:
        yield ClusterDatabases(vectors, vector_database(pg_admin_url, ref, tmp_path / "ref"), dagster_url)


@pytest.fixture
def redis_broker(tmp_path):
    with running_redis(tmp_path / "redis") as url:
        yield url


@pytest.fixture
def cluster(tmp_path, scaling_config, cluster_databases, redis_broker, monkeypatch):
    """Nothing started yet: the test starts workers and the daemon; every process group is stopped at the end.

    The environment is what a deployment sets: the config file, the vector database, the instance's
    database and DAGSTER_HOME (the repo's dagster.yaml: Postgres storage, QueuedRunCoordinator), the broker."""
    config_path, _ = scaling_config
    home = tmp_path / "dagster_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDING_PIPELINE_", "DAGSTER_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # dagster-celery runs `celery` from PATH
        "PYTHONPATH": str(REPO),
        "EMBEDDING_PIPELINE_CONFIG": str(config_path),
        "EMBEDDING_PIPELINE_DATABASE_URL": cluster_databases.vectors.url,
        "EMBEDDING_PIPELINE_HOME": str(tmp_path / "state"),
        DAGSTER_DATABASE_URL_ENV: cluster_databases.dagster_url,
        "DAGSTER_HOME": str(home),
        BROKER_ENV: redis_broker,
    })
    env = prepare_dagster_home(cluster_databases.vectors, env)
    for key in ("DAGSTER_HOME", "EMBEDDING_PIPELINE_DAGSTER_PG_URL", BROKER_ENV):
        monkeypatch.setenv(key, env[key])  # the test's own DagsterInstance reads the same instance
    logs = tmp_path / "logs"
    logs.mkdir()
    # As a deployment does before its first start: workers starting together on an empty instance
    # database race to create its tables (a worker died of "type runs already exists").
    init = subprocess.run([str(BIN / "embedding-pipeline"), "dagster-init", "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False)
    assert init.returncode == 0, init.stdout + init.stderr[-3000:]
    assert json.loads(init.stdout)["pools"] == scaling_config[1].pool_limits()
    c = Cluster(env, logs)
    try:
        yield c
    finally:
        c.stop()
