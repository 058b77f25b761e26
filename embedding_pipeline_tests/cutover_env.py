"""The shared starting state of the cutover and deletion tests.

Legacy column filled with real MiniLM vectors and `minilm-256` fully embedded, built once per
module into a template database; each test gets its own copy via CREATE DATABASE ... TEMPLATE.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
import yaml
from psycopg import sql

from embedding_pipeline.backup.postgres import TableRef
from embedding_pipeline.backup.run import take_backup
from embedding_pipeline.config import load_config
from embedding_pipeline.db.connection import (
    Database,
    ensure_extension,
    url_with_database,
)
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.providers import build_provider
from embedding_pipeline.read_path.install import served_space
from embedding_pipeline.spaces.bindings import bindings
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline_tests.conftest import TEST_CONFIG
from embedding_pipeline_tests.sources import make_documents

SOURCE, LEGACY, NEW = "documents", "minilm", "minilm-256"

QUERY = "how long should pasta boil in salted water"


@pytest.fixture(scope="module")
def providers():
    cache = {}
    yield cache
    for p in cache.values():
        p.close()


class Env:
    """One test's database, config (documents -> legacy minilm + minilm-256) and providers."""

    def __init__(self, db, cfg, providers, path):
        self.db, self.cfg, self._providers, self.config_path = db, cfg, providers, path
        self.schema, self.dbname = cfg.project_schema, None

    def provider_for(self, name):
        if name not in self._providers:
            self._providers[name] = build_provider(name, self.cfg.space(name))
        return self._providers[name]

    def bindings(self) -> list:
        with self.db.connect() as conn:
            return bindings(conn, self.schema, SOURCE)

    def binding(self, space):
        return next(b for b in self.bindings() if b.space == space)

    def served(self) -> str | None:
        with self.db.connect() as conn:
            return served_space(conn, self.cfg, SOURCE)

    def audit(self, action=None) -> list[dict]:
        with self.db.connect() as conn:
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            return cur.execute(sql.SQL("SELECT * FROM {}.audit WHERE %(a)s::text IS NULL OR action = %(a)s ORDER BY id")
                               .format(sql.Identifier(self.schema)), {"a": action}).fetchall()

    def backup(self, *spaces):
        """A real verified backup of the source table and the given spaces' tables."""
        tables = [TableRef("public", "documents")]
        tables += [TableRef(self.schema, space_table_name(SOURCE, s)) for s in spaces]
        return take_backup(self.db, source=SOURCE, tables=tables, cfg=self.cfg.backup)

    def eval_row(self, candidate, active=LEGACY, passed=True):
        """Test setup standing in for the eval asset: the gate reads only this row."""
        with self.db.connect() as conn:
            conn.execute(sql.SQL(
                "INSERT INTO {}.eval_reports (source, eval_set, kind, active_space, candidate_space, metrics, "
                "gate_passed, tolerance) VALUES (%s, 'test-setup', 'unlabeled', %s, %s, '{{}}'::jsonb, %s, 0.01)"
            ).format(sql.Identifier(self.schema)), (SOURCE, active, candidate, passed))
            conn.commit()

    def gates_pass(self, space=NEW, active=LEGACY):
        self.backup(space)
        self.eval_row(space, active)


def _build_state(db, cfg, provider_for) -> None:
    with db.connect() as conn:
        ensure_schema(conn, cfg.project_schema)
        conn.commit()
        make_documents(conn, 40)
        # The legacy column holds real MiniLM vectors, as the application would have written them.
        rows = conn.execute("SELECT id, content FROM documents ORDER BY id").fetchall()
        vecs = provider_for(LEGACY).embed_documents([r[1] for r in rows])
        with conn.cursor() as cur:
            cur.executemany("UPDATE documents SET embedding = %s WHERE id = %s",
                            [(v, r[0]) for v, r in zip(vecs, rows)])
        conn.commit()
        prepare_source(conn, cfg, SOURCE, provider_for, spaces=[LEGACY, NEW])
    reembed(db, cfg, SOURCE, NEW, provider_for(NEW))


@pytest.fixture(scope="module")
def template(pg_admin_url, pg_home, providers, tmp_path_factory):
    """The shared starting state, built once per module by the real pipeline and real models:
    documents (40 rows, legacy column filled by MiniLM), minilm active, minilm-256 fully embedded.
    Each test gets its own copy (CREATE DATABASE ... TEMPLATE), so the models run once."""
    base = load_config(TEST_CONFIG)
    src = base.sources[SOURCE].model_copy(update={"spaces": [NEW]})
    cfg = base.model_copy(update={"sources": {SOURCE: src}})
    name = f"tmpl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = Database(url=url_with_database(pg_admin_url, name), embedded=False, home=pg_home / name)
    with db.connect(autocommit=True) as conn:
        ensure_extension(conn)
    _build_state(db, cfg, Env(db, cfg, providers, None).provider_for)
    yield name, cfg
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def make_env(template, pg_admin_url, pg_home, providers, tmp_path, monkeypatch, **config_updates) -> Env:
    """A fresh copy of the template database, the environment pointing at it, and its config file."""
    tmpl, cfg = template
    cfg = cfg.model_copy(update=config_updates)
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(tmpl)))
    url = url_with_database(pg_admin_url, name)
    monkeypatch.setenv("EMBEDDING_PIPELINE_DATABASE_URL", url)
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(pg_home / name))
    (pg_home / name).mkdir()
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True, exclude_none=True)))
    env = Env(Database(url=url, embedded=False, home=pg_home / name), load_config(path), providers, path)
    env.dbname = name
    return env


@pytest.fixture
def make(template, pg_admin_url, pg_home, providers, tmp_path, monkeypatch):
    """make(**config_updates) -> Env on a fresh copy of the template; the copies are dropped afterwards."""
    made = []

    def _make(**config_updates) -> Env:
        made.append(make_env(template, pg_admin_url, pg_home, providers, tmp_path, monkeypatch, **config_updates))
        return made[-1]
    yield _make
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for e in made:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(e.dbname)))


@pytest.fixture
def env(make) -> Env:
    return make()


def snapshot(env: Env):
    """Everything a refused operation must leave untouched: the bindings and the space the view reads."""
    return env.bindings(), env.served()
