"""Fixtures of the application column cutover tests: Honcho's real schema, one template database per
module (seeded and re-embedded once), a copy of it per test."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import yaml
from psycopg import sql

from embedding_pipeline.config import load_config
from embedding_pipeline.db.connection import (
    Database,
    ensure_extension,
    url_with_database,
)
from embedding_pipeline_tests.support.app_cutover_env import (
    AppEnv,
    app_config_dict,
    build_template,
)


@pytest.fixture(scope="module")
def providers():
    cache = {}
    yield cache
    for p in cache.values():
        p.close()


@pytest.fixture(scope="module")
def app_template(pg_admin_url, pg_home, providers, tmp_path_factory):
    path = tmp_path_factory.mktemp("appcfg") / "pipeline.yaml"
    path.write_text(yaml.safe_dump(app_config_dict()))
    cfg = load_config(path)
    name = f"tmpl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = Database(url=url_with_database(pg_admin_url, name), embedded=False, home=pg_home / name)
    with db.connect(autocommit=True) as conn:
        ensure_extension(conn)
    build_template(db, cfg, AppEnv(db, cfg, providers, path).provider_for)
    yield name, path
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def app_env(app_template, pg_admin_url, pg_home, providers, monkeypatch):
    tmpl, path = app_template
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(tmpl)))
    url = url_with_database(pg_admin_url, name)
    monkeypatch.setenv("EMBEDDING_PIPELINE_DATABASE_URL", url)
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(pg_home / name))
    monkeypatch.setenv("EMBEDDING_PIPELINE_CONFIG", str(path))
    (pg_home / name).mkdir()
    env = AppEnv(Database(url=url, embedded=False, home=pg_home / name), load_config(path), providers, path)
    env.dbname, env.url = name, url
    yield env
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
