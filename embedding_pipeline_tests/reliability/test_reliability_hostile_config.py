"""Hostile names and filters in the config: quoted when legitimate, refused by name when wrong, never executed.

Related cases covered elsewhere: a ``row_filter`` with ``;`` or a comment
(test_config.py::test_invalid_config_names_the_key) or with parentheses or quotes that do not
balance, e.g. ``deleted_at IS NULL) OR (true`` (test_config.py::test_row_filter_must_be_one_expression),
is refused when the config loads; space and source names are restricted to ``[a-z0-9_-]``, so only
table, schema and column names reach SQL as identifiers, always through ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

import pytest
import yaml
from psycopg import sql

from embedding_pipeline.cli import main
from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.cutover.status import status
from embedding_pipeline.cutover.switch import cutover
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.coverage import space_counts
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.read_path.search import search
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline.spaces.source import inspect_source
from embedding_pipeline.spaces.validator import validate
from embedding_pipeline_tests.support.reliability_report import record
from embedding_pipeline_tests.support.sources import make_documents

SPACE, LEGACY, ROWS = "minilm-256", "minilm", 30
HOSTILE = {
    "schema": 'My "Schema"',
    "table": "docs; DROP TABLE x;--",
    "id_column": "Id Col",
    "text_column": 'Text"Col',
}
HOSTILE_PROJECT = 'ep "proj"; DROP TABLE x;--'


def _config(config, project_schema: str = HOSTILE_PROJECT, **source) -> PipelineConfig:
    """A config validated from plain data, as the YAML loader builds it."""
    raw = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc = raw["sources"]["documents"]
    doc.update(HOSTILE)
    doc.update(source)
    doc["spaces"] = [SPACE]
    raw["sources"] = {"documents": doc}
    raw["project_schema"] = project_schema
    return PipelineConfig.model_validate(raw)


def _canaries(conn) -> dict:
    """Tables named x that an executed `DROP TABLE x` would remove, with their row counts."""
    return {s: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(s, "x"))).fetchone()[0]
            for s in ("public", HOSTILE["schema"])
            if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(s, "x").as_string(conn),)).fetchone()[0]}


@pytest.fixture
def hostile(db, config, provider_cache):
    cfg = _config(config)
    provider_for = provider_cache.for_config(cfg)

    with db.connect() as conn:
        make_documents(conn, ROWS, **HOSTILE)
        for schema in ("public", HOSTILE["schema"]):
            conn.execute(sql.SQL("CREATE TABLE {} (v int)").format(sql.Identifier(schema, "x")))
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(schema, "x")))
        conn.commit()
        assert _canaries(conn) == {"public": 1, HOSTILE["schema"]: 1}
    return cfg, provider_for


def _nothing_written(conn, cfg) -> dict:
    """What a refused run must not have left behind: space tables, bindings, registered spaces."""
    schema = cfg.project_schema
    out = {"space_table": conn.execute("SELECT to_regclass(%s)", (
        sql.Identifier(schema, space_table_name("documents", SPACE)).as_string(conn),)).fetchone()[0]}
    for t in ("bindings", "spaces"):
        exists = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, t).as_string(conn),)).fetchone()[0]
        out[t] = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, t))).fetchone()[0] \
            if exists else 0
    return out


def test_quoted_identifiers_work_end_to_end(db, hostile, tmp_path, capsys):
    """Names with quotes, semicolons, spaces and case are identifiers: every operation works, no SQL runs from them."""
    cfg, provider_for = hostile
    with db.connect() as conn:
        ensure_schema(conn, cfg.project_schema)
        conn.commit()
        prepare_source(conn, cfg, "documents", provider_for, spaces=[LEGACY, SPACE])
    first = reembed(db, cfg, "documents", SPACE, provider_for(SPACE), batch_size=8)
    assert (first.embedded, first.coverage, first.index_built) == (ROWS, 1.0, True)
    tbl = sql.Identifier(HOSTILE["schema"], HOSTILE["table"])
    idc, txt = sql.Identifier(HOSTILE["id_column"]), sql.Identifier(HOSTILE["text_column"])
    with db.connect() as conn:
        conn.execute(sql.SQL("UPDATE {} SET {} = 'Fresh pasta cooks in three minutes.' WHERE {} = 'doc00001'")
                     .format(tbl, txt, idc))
        conn.execute(sql.SQL("UPDATE {} SET deleted_at = now() WHERE {} = 'doc00002'").format(tbl, idc))
        conn.commit()
    second = reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
    assert (second.embedded, second.deleted, second.stored) == (1, 1, ROWS - 1)
    with db.connect() as conn:
        src = inspect_source(conn, "documents", cfg.source("documents"))
        counts = space_counts(conn, cfg, src, SPACE)
        legacy = space_counts(conn, cfg, src, LEGACY)
        report = validate(conn, cfg, provider_for)
    assert (counts.covered, counts.stale, counts.orphans) == (ROWS - 1, 0, 0)
    assert (legacy.eligible, legacy.declared_dims) == (ROWS - 1, 384)
    assert report.ok, report.failures()
    result = cutover(db, cfg, "documents", SPACE, force=True, actor="reliability-test")
    hits = search(db, cfg, "documents", "how long does pasta cook", k=3, provider_for=provider_for)
    assert result["space"] == SPACE and hits.space == SPACE and hits.ids[0] == "doc00001"
    assert "doc00002" not in search(db, cfg, "documents", "x", k=ROWS, provider_for=provider_for).ids
    assert {s["name"]: s["status"] for s in status(db, cfg)[0]["spaces"]}[SPACE] == "active"
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True, exclude_none=True)))
    assert main(["--config", str(path), "validate", "--no-canaries", "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out
    with db.connect() as conn:
        assert _canaries(conn) == {"public": 1, HOSTILE["schema"]: 1}
    record("hostile_config/quoted-identifiers", embedded=first.embedded, reembedded_after_edit=second.embedded,
           deleted_after_soft_delete=second.deleted, validate_ok=report.ok, cutover_space=result["space"],
           canary_tables_intact=2)


@pytest.mark.parametrize("key, value, needle", [
    ("table", "no such table", "table My \"Schema\".no such table does not exist"),
    ("schema", "nowhere", "table nowhere.docs; DROP TABLE x;-- does not exist"),
    ("id_column", "id", "sources.documents.id_column: column 'id' not found"),
    ("text_column", 'content"; DROP TABLE x; --',
     "sources.documents.text_column: column 'content\"; DROP TABLE x; --' not found"),
    ("legacy_vector_column", "vec tor", "sources.documents.legacy_vector_column: column 'vec tor' not found"),
    ("updated_at_column", "modified", "sources.documents.updated_at_column: column 'modified' not found"),
    ("row_filter", "archived_at IS NULL", 'sources.documents.row_filter is not a valid expression on My "Schema".docs; '
                                          'DROP TABLE x;--: column "archived_at" does not exist'),
])
def test_missing_table_column_or_filter_is_named_before_anything_is_written(db, config, hostile, key, value, needle):
    """A wrong name is a ConfigError naming the key and the name, raised before any space, table or vector exists."""
    _, provider_for = hostile
    cfg = _config(config, **{key: value})
    outcomes = []
    for attempt in (lambda c: prepare_source(c, cfg, "documents", provider_for),
                    lambda c: reembed(db, cfg, "documents", SPACE, provider_for(SPACE))):
        with db.connect() as conn, pytest.raises(ConfigError) as e:
            attempt(conn)
        assert needle in str(e.value)
        outcomes.append(str(e.value))
    with db.connect() as conn:
        report = validate(conn, cfg, provider_for)
        assert not report.ok and needle in report.failures()[0].message
        assert _nothing_written(conn, cfg) == {"space_table": None, "bindings": 0, "spaces": 0}
        assert _canaries(conn) == {"public": 1, HOSTILE["schema"]: 1}
    record(f"hostile_config/missing-{key}", refused=len(outcomes) + 1, vectors_written=0, canary_tables_intact=2)

