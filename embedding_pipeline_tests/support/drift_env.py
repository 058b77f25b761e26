"""The drift tests' starting state (their fixtures: ``drift/conftest.py``): documents embedded into an
active ``minilm-256`` table, a config written for it, and a loopback webhook that records alerts."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import yaml

from embedding_pipeline.db.connection import Database
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline_tests.support.sources import TOPICS, make_documents

SPACE = "minilm-256"
SCHEMA = "embedding_pipeline"
TABLE = f"{SCHEMA}.documents__{SPACE}"


def write_config(base: Path, tmp_path: Path, *, messages: bool = False, **drift) -> Path:
    """The test config with documents cut over to minilm-256 (the legacy column is a shadow)."""
    raw = yaml.safe_load(base.read_text())
    raw["sources"]["documents"].update(spaces=[SPACE], active_space=SPACE)
    if not messages:
        raw["sources"].pop("message_embeddings")
    raw["drift"] = {**raw.get("drift", {}), **drift}
    path = tmp_path / "drift.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def seed(db: Database, cfg, providers, n: int = 40) -> None:
    with db.connect() as conn:
        ensure_schema(conn, SCHEMA)
        make_documents(conn, n)
        prepare_source(conn, cfg, "documents", providers.__getitem__)
    reembed(db, cfg, "documents", SPACE, providers[SPACE], build_hnsw=False)


class Capture(BaseHTTPRequestHandler):
    """A Slack-like webhook handler: records (path, content type, JSON body); answers ``server.status``."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.captured.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def assert_no_content(payloads) -> None:
    blob = json.dumps(payloads)
    for topic in TOPICS:
        assert topic[:25] not in blob
    assert "Rewritten" not in blob
