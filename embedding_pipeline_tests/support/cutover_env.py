"""The shared starting state of the cutover and deletion tests (their fixtures: ``cutover/conftest.py``).

Legacy column filled with real MiniLM vectors and `minilm-256` fully embedded, built once per
module into a template database; each test gets its own copy via CREATE DATABASE ... TEMPLATE.
"""

from __future__ import annotations

import uuid

import psycopg
import yaml
from psycopg import sql
from psycopg.types.json import Jsonb

from embedding_pipeline.backup.postgres import TableRef
from embedding_pipeline.backup.run import take_backup
from embedding_pipeline.config import PipelineConfig, load_config
from embedding_pipeline.db.connection import Database, url_with_database
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.read_path.install import served_space
from embedding_pipeline.spaces.bindings import bindings
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline_tests.support.configs import TEST_CONFIG, narrowed
from embedding_pipeline_tests.support.databases import create_database, vector_database
from embedding_pipeline_tests.support.sources import make_documents

SOURCE, LEGACY, NEW = "documents", "minilm", "minilm-256"

QUERY = "how long should pasta boil in salted water"


class Env:
    """One test's database, config (documents -> legacy minilm + minilm-256) and providers."""

    def __init__(self, db, cfg, provider_cache, path):
        self.db, self.cfg, self._providers, self.config_path = db, cfg, provider_cache, path
        self.schema, self.dbname = cfg.project_schema, None

    def provider_for(self, name):
        return self._providers.get(self.cfg, name)

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

    def eval_row(self, candidate, active=LEGACY, passed=True, kind="unlabeled", metrics=None):
        """Test setup standing in for the eval asset: the gate reads only this row."""
        with self.db.connect() as conn:
            conn.execute(sql.SQL(
                "INSERT INTO {}.eval_reports (source, eval_set, kind, active_space, candidate_space, metrics, "
                "gate_passed, tolerance) VALUES (%s, 'test-setup', %s, %s, %s, %s, %s, 0.01)"
            ).format(sql.Identifier(self.schema)), (SOURCE, kind, active, candidate, Jsonb(metrics or {}), passed))
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


def template_config() -> PipelineConfig:
    base = load_config(TEST_CONFIG)
    return narrowed(base, sources=(SOURCE,), source={"spaces": [NEW]})


def build_template(pg_admin_url, name: str, home, provider_cache) -> None:
    """The shared starting state, built by the real pipeline and real models into database ``name``:
    documents (40 rows, legacy column filled by MiniLM), minilm active, minilm-256 fully embedded."""
    cfg = template_config()
    db = vector_database(pg_admin_url, name, home)
    _build_state(db, cfg, Env(db, cfg, provider_cache, None).provider_for)


def make_env(template: str, pg_admin_url, pg_home, provider_cache, tmp_path, monkeypatch, **config_updates) -> Env:
    """A fresh copy of the template database, the environment pointing at it, and its config file."""
    cfg = template_config().model_copy(update=config_updates)
    name = f"t_{uuid.uuid4().hex[:12]}"
    create_database(pg_admin_url, name, template=template)
    url = url_with_database(pg_admin_url, name)
    monkeypatch.setenv("EMBEDDING_PIPELINE_DATABASE_URL", url)
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(pg_home / name))
    (pg_home / name).mkdir()
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True, exclude_none=True)))
    env = Env(Database(url=url, embedded=False, home=pg_home / name), load_config(path), provider_cache, path)
    env.dbname = name
    return env


def snapshot(env: Env):
    """Everything a refused operation must leave untouched: the bindings and the space the view reads."""
    return env.bindings(), env.served()
