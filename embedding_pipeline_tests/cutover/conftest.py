"""Fixtures of the cutover and deletion tests: one template database per module, a copy per test."""

from __future__ import annotations

import pytest

from embedding_pipeline_tests.support.cutover_env import Env, build_template, make_env
from embedding_pipeline_tests.support.databases import drop_database, scratch_database


@pytest.fixture(scope="module")
def template(pg_admin_url, pg_home, provider_cache):
    """The shared starting state (support.cutover_env), built once per module: the models run once."""
    with scratch_database(pg_admin_url, "tmpl") as name:
        build_template(pg_admin_url, name, pg_home / name, provider_cache)
        yield name


@pytest.fixture
def make(template, pg_admin_url, pg_home, provider_cache, tmp_path, monkeypatch):
    """make(**config_updates) -> Env on a fresh copy of the template; the copies are dropped afterwards."""
    made = []

    def _make(**config_updates) -> Env:
        made.append(make_env(template, pg_admin_url, pg_home, provider_cache, tmp_path, monkeypatch, **config_updates))
        return made[-1]
    yield _make
    for e in made:
        drop_database(pg_admin_url, e.dbname)


@pytest.fixture
def env(make) -> Env:
    return make()
