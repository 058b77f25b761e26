"""The starting state of the app column cutover tests: Honcho's real tables, real models.

``documents`` and ``message_embeddings`` (honcho_schema.py) hold real MiniLM vectors in their
``embedding`` columns, as Honcho would have written them; both are sources of app ``honcho``
(``cutover: column``) and are fully embedded into ``minilm-256`` (another dimension) and
``minilm-p`` (MiniLM with e5-style prompts: another space at the same 384 dimensions). Built
once per module into a template database; each test gets its own copy.
"""

from __future__ import annotations

import random
import uuid

import yaml
from psycopg import sql
from psycopg.types.json import Jsonb

from embedding_pipeline.backup.postgres import TableRef
from embedding_pipeline.backup.run import take_backup
from embedding_pipeline.db.connection import (
    Database,
)
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.providers import build_provider
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline_tests.conftest import TEST_CONFIG
from embedding_pipeline_tests.support import honcho_schema

APP, LEGACY, NEW, SAME_DIM = "honcho", "minilm", "minilm-256", "minilm-p"
SOURCES = {"documents": "deleted_at IS NULL", "message_embeddings": None}
APP_NAME = "honcho-api"  # the application_name the app's sessions carry
N_DOCS, N_MSGS = 24, 16


def app_config_dict() -> dict:
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    raw["spaces"][SAME_DIM] = {"transport": "sentence-transformers", "model": "sentence-transformers/all-MiniLM-L6-v2",
                               "dimensions": 384, "query_prompt": "query: ", "document_prompt": "passage: ",
                               "description": "same model and dimension, other prompts: a different 384-d space"}
    raw["sources"] = {}
    for name, filt in SOURCES.items():
        src = {"schema": "public", "table": name, "id_column": "id", "text_column": "content",
               "legacy_vector_column": "embedding", "legacy_space": LEGACY, "active_space": LEGACY,
               "spaces": [NEW, SAME_DIM]}
        if filt:
            src["row_filter"] = filt
        raw["sources"][name] = src
    raw["apps"] = {APP: {"sources": list(SOURCES), "cutover": "column", "app_roles": ["honcho_app"],
                         "application_names": [APP_NAME], "fill_batch_size": 7, "lock_timeout_ms": 300,
                         "flip_retries": 1}}
    return raw


class AppEnv:
    def __init__(self, db: Database, cfg, providers, path):
        self.db, self.cfg, self._providers, self.config_path = db, cfg, providers, path
        self.schema, self.dbname = cfg.project_schema, None

    def provider_for(self, name):
        if name not in self._providers:
            self._providers[name] = build_provider(name, self.cfg.space(name))
        return self._providers[name]

    def gates_pass(self, space=NEW, active=LEGACY, sources=tuple(SOURCES)):
        """A real verified backup and a passed shadow-eval row, per source.

        The backup holds the tables Honcho's foreign keys reach too: restoring ``documents`` alone
        into the scratch database fails on its FK to ``peers`` (backup_source does not add them yet).
        """
        for s in sources:
            take_backup(self.db, source=s, tables=[*(TableRef("public", t) for t in honcho_schema.FK_CLOSURE[s]),
                                                   TableRef(self.schema, space_table_name(s, space))],
                        cfg=self.cfg.backup)
            with self.db.connect() as conn:
                conn.execute(sql.SQL(
                    "INSERT INTO {}.eval_reports (source, eval_set, kind, active_space, candidate_space, metrics, "
                    "gate_passed, tolerance) VALUES (%s, 'test-setup', 'labeled', %s, %s, %s, true, 0.01)"
                ).format(sql.Identifier(self.schema)),
                    (s, active, space, Jsonb({"active": {"ndcg@10": 0.60}, "candidate": {"ndcg@10": 0.62}})))
                conn.commit()

    def q(self, query, params=None):
        with self.db.connect() as conn:
            return conn.execute(query, params).fetchall()


def build_template(db, cfg, provider_for) -> None:
    with db.connect() as conn:
        ensure_schema(conn, cfg.project_schema)
        honcho_schema.create(conn, 384)
        honcho_schema.seed(conn, N_DOCS, N_MSGS, embed=provider_for(LEGACY).embed_documents)
        conn.commit()
        for s in SOURCES:
            prepare_source(conn, cfg, s, provider_for, spaces=[LEGACY, NEW, SAME_DIM])
    for s in SOURCES:
        for space in (NEW, SAME_DIM):
            reembed(db, cfg, s, space, provider_for(space))


def columns_of(env, table: str) -> dict[str, str]:
    """{column: declared type} of a live table, read from the catalog."""
    return dict(env.q("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
                      "AND attnum > 0 AND NOT attisdropped", (table,)))


def rng():
    return random.Random(uuid.uuid4().int)
