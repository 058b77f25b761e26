"""The application cutover seen from outside: config checks, the CLI, the Dagster jobs, drift and status
after a flip, and hostile table, column and index names."""

from __future__ import annotations

import psycopg
import pytest
import yaml

from embedding_pipeline.config import load_config
from embedding_pipeline.cutover.app_flip import cutover_app, rollback_app
from embedding_pipeline.cutover.app_stage import stage
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.spaces.columns import hnsw_index_on
from embedding_pipeline_tests.support import honcho_schema
from embedding_pipeline_tests.support.app_cutover_env import (
    APP,
    LEGACY,
    N_MSGS,
    NEW,
    SAME_DIM,
    SOURCES,
    app_config_dict,
    columns_of,
)
from embedding_pipeline_tests.support.shard_runs import materialize_shards_then_index


def _cfg(tmp_path, mutate):
    raw = app_config_dict()
    mutate(raw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_apps_config_references_are_checked(tmp_path):
    cfg = _cfg(tmp_path, lambda r: None)
    assert cfg.app(APP).cutover == "column" and cfg.app_of("documents") == APP
    with pytest.raises(ConfigError, match=r"apps\.honcho\.sources: unknown source 'nope'"):
        _cfg(tmp_path, lambda r: r["apps"][APP]["sources"].append("nope"))
    with pytest.raises(ConfigError, match=r"apps\.other\.sources: source 'documents' already belongs to app 'honcho'"):
        _cfg(tmp_path, lambda r: r["apps"].update(other={"sources": ["documents"]}))
    with pytest.raises(ConfigError, match=r"apps\.honcho\.cutover: 'column' needs sources\.documents\.legacy_vector_"):
        _cfg(tmp_path, lambda r: (r["sources"]["documents"].pop("legacy_space"),
                                  r["sources"]["documents"].pop("legacy_vector_column")))
    with pytest.raises(ConfigError, match=r"apps\.honcho\.cutover"):
        _cfg(tmp_path, lambda r: r["apps"][APP].update(cutover="in-place"))
    with pytest.raises(ConfigError, match=r"unknown app 'x'"):
        cfg.app("x")
    view = _cfg(tmp_path, lambda r: r["apps"][APP].update(cutover="view"))
    with pytest.raises(ConfigError, match=r"apps\.honcho\.cutover is 'view'.*cutover --source"):
        cutover_app(None, view, APP, NEW)


def test_cli_app_stage_cutover_env_status_and_rollback(app_env, capsys):
    import json

    from embedding_pipeline.cli import main

    env = app_env
    cfg = ["--config", str(env.config_path)]
    assert main([*cfg, "app-env", "--app", APP]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "EMBEDDING_VECTOR_DIMENSIONS=384", "EMBEDDING_MODEL_CONFIG__MODEL=sentence-transformers/all-MiniLM-L6-v2",
        "EMBEDDING_MODEL_CONFIG__TRANSPORT=sentence_transformers"]
    assert main([*cfg, "app-stage", "--app", APP, "--space", NEW, "--json"]) == 0
    assert [r["column"] for r in json.loads(capsys.readouterr().out)] == ["embedding__minilm-256"] * 2
    assert main([*cfg, "cutover", "--app", APP, "--space", NEW]) == 1  # gates: no backup, no evaluation
    assert "refused" in capsys.readouterr().err
    assert main([*cfg, "cutover", "--app", APP, "--space", NEW, "--force"]) == 0
    out = capsys.readouterr().out
    assert "app honcho: columns now hold minilm-256 (was minilm)" in out and "FORCED" in out
    assert main([*cfg, "app-env", "--app", APP, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["EMBEDDING_VECTOR_DIMENSIONS"] == "256"
    assert main([*cfg, "status", "--json"]) == 0
    report = {s["source"]: s for s in json.loads(capsys.readouterr().out)}
    assert report["documents"]["active_space"] == NEW
    assert report["documents"]["app"]["holds"] == NEW and report["documents"]["app"]["validator"] == "ok"
    assert report["documents"]["app"]["aside"] == {LEGACY: "embedding__minilm"}
    assert main([*cfg, "status"]) == 0
    assert "app honcho (column cutover): columns hold minilm-256" in capsys.readouterr().out
    assert main([*cfg, "cutover", "--source", "documents", "--space", SAME_DIM, "--force"]) == 1
    assert "cutover --app honcho" in capsys.readouterr().err
    assert main([*cfg, "rollback", "--app", APP]) == 0
    assert "columns now hold minilm (was minilm-256)" in capsys.readouterr().out


def test_dagster_app_jobs(app_env):
    import dagster as dg

    from embedding_pipeline.defs.cutover import app_jobs
    from embedding_pipeline.defs.resources import PipelineResource

    env = app_env
    defs = dg.Definitions.merge(app_jobs.build(env.cfg), dg.Definitions(
        resources={"pipeline": PipelineResource(config_path=str(env.config_path))}))

    def run(job, **cfg):
        return defs.get_job_def(job).execute_in_process(
            run_config={"ops": {f"{job}_op": {"config": cfg}}}, raise_on_error=False)

    assert run("app_stage", app=APP, space=NEW).success
    assert run("app_cutover", app=APP, space=NEW, force=True).success
    assert columns_of(env, "documents")["embedding"] == "vector(256)"
    again = run("app_cutover", app=APP, space=NEW, force=True)
    assert not again.success  # refused: the columns already hold minilm-256
    failure = again.failure_data_for_node("app_cutover_op").user_failure_data
    assert failure.description.splitlines()[1:] == [
        f"- {s}: space {NEW!r} is already the active space of source {s!r}; nothing to do" for s in SOURCES]
    assert run("app_rollback", app=APP).success
    assert columns_of(env, "documents")["embedding"] == "vector(384)"


def test_dagster_shards_of_honchos_message_embeddings(app_env, tmp_path):
    """Honcho's ``message_embeddings`` (bigint identity id) split into 3 shard partitions in Dagster: the
    shard runs together embed every row once, under its bigint key, and the index asset covers it all."""
    from embedding_pipeline.defs.embeddings.assets import build, index_key, reembed_key
    from embedding_pipeline.embeddings.reembed import reembed
    from embedding_pipeline.spaces.model import space_table_name

    env, src = app_env, "message_embeddings"
    raw = app_config_dict()
    raw["sources"][src]["shards"] = 3
    path = tmp_path / "sharded.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    table = psycopg.sql.Identifier(env.schema, space_table_name(src, NEW))
    with env.db.connect() as conn:  # the template embedded and indexed it whole: start from nothing
        conn.execute(psycopg.sql.SQL("DELETE FROM {}").format(table))
        [(hnsw,)] = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s "
                                 "AND indexdef LIKE '%%USING hnsw%%'", (env.schema, space_table_name(src, NEW))).fetchall()
        conn.execute(psycopg.sql.SQL("DROP INDEX {}").format(psycopg.sql.Identifier(env.schema, hnsw)))
    assets = {a.key: a for a in build(cfg).assets}
    shards, index = assets[reembed_key(NEW)], assets[index_key(NEW)]
    keys = [f"{src}:{k}/3" for k in range(3)]
    assert [k for k in shards.partitions_def.get_partition_keys() if k.startswith(src)] == keys
    runs, m = materialize_shards_then_index(shards, index, keys, src, path)
    embedded = [r.metadata["rows_embedded"].value for r in runs]
    ids = [r[0] for r in env.q(f"SELECT id FROM public.{src} ORDER BY id")]
    assert sum(embedded) == len(ids) == N_MSGS and sum(1 for n in embedded if n) >= 2  # the work was split
    assert [r[0] for r in env.q(psycopg.sql.SQL("SELECT source_id FROM {} ORDER BY 1").format(table))] == ids
    assert all(isinstance(i, int) for i in ids)  # Honcho's bigint identity, stored as such
    assert m.metadata["index_built"].value and m.metadata["coverage_pct"].value == 100.0
    assert reembed(env.db, cfg, src, NEW, env.provider_for(NEW)).embedded == 0  # one whole pass finds nothing left


def test_drift_and_status_read_the_movedcolumns_of(app_env):
    from embedding_pipeline.cutover.status import status
    from embedding_pipeline.drift.stats import collect, evaluate

    env = app_env

    def failures():
        with env.db.connect() as conn:
            drifts = [d for s in SOURCES for d in collect(conn, env.cfg, s)]
        bad = [f.message for o in evaluate(env.cfg, drifts) for f in o.findings if f.severity == "error"]
        return bad, {(d.source, d.space): (d.counts.table, d.counts.declared_dims) for d in drifts}

    stage(env.db, env.cfg, APP, NEW)
    cutover_app(env.db, env.cfg, APP, NEW, force=True)
    bad, tables = failures()
    assert bad == []
    # The retired legacy space is read from the column it was moved to, at its own dimension.
    assert tables[("documents", LEGACY)] == ("public.documents.embedding__minilm", 384)
    rows = {s["source"]: s for s in status(env.db, env.cfg)}
    legacy = next(sp for sp in rows["documents"]["spaces"] if sp["name"] == LEGACY)
    assert rows["documents"]["active_space"] == NEW and rows["documents"]["rollback_available"]
    assert legacy["table"] == "public.documents.embedding__minilm" and legacy["coverage"] == 1.0
    rollback_app(env.db, env.cfg, APP, provider_for=env.provider_for)
    bad, tables = failures()
    assert bad == [] and tables[("documents", LEGACY)] == ("public.documents.embedding", 384)


def test_hostile_table_and_column_names(db, tmp_path, providers):
    """Quotes, spaces and capitals in the app's table and column names, a 63-byte-long staged name."""
    from embedding_pipeline.db.schema import ensure_schema
    from embedding_pipeline.embeddings.reembed import reembed
    from embedding_pipeline.embeddings.setup import prepare_source
    from embedding_pipeline.providers import build_provider

    table, col = 'Honcho "Docs"; x', 'Emb "v" ' + "w" * 40
    raw = app_config_dict()
    raw["sources"] = {"docs": {"schema": "public", "table": table, "id_column": "id", "text_column": "content",
                               "legacy_vector_column": col, "legacy_space": LEGACY, "active_space": LEGACY,
                               "spaces": [NEW]}}
    raw["apps"] = {APP: {"sources": ["docs"], "cutover": "column"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)

    def provider_for(name):
        if name not in providers:
            providers[name] = build_provider(name, cfg.space(name))
        return providers[name]
    texts = honcho_schema.TEXTS
    ident = psycopg.sql.Identifier("public", table)
    with db.connect() as conn:
        ensure_schema(conn, cfg.project_schema)
        conn.execute(psycopg.sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, content text, {} vector(384))").format(
            ident, psycopg.sql.Identifier(col)))
        conn.execute(psycopg.sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} vector_cosine_ops) WITH (m = 8, "
                                     "ef_construction = 32)").format(psycopg.sql.Identifier("live idx"), ident,
                                                                     psycopg.sql.Identifier(col)))
        with conn.cursor() as cur:
            cur.executemany(psycopg.sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(ident), [
                (i, t, v) for i, (t, v) in enumerate(zip(texts, provider_for(LEGACY).embed_documents(texts)))])
        conn.commit()
        prepare_source(conn, cfg, "docs", provider_for, spaces=[LEGACY, NEW])
    reembed(db, cfg, "docs", NEW, provider_for(NEW))
    [r] = stage(db, cfg, APP, NEW)
    assert len(r.column.encode()) <= 63 and r.index_action == "built"
    out = cutover_app(db, cfg, APP, NEW, force=True)
    assert out["validator"] == "ok"
    with db.connect() as conn:
        live = hnsw_index_on(conn, "public", table, col)
        assert (live["name"], live["m"], live["ef_construction"]) == ("live idx", 8, 32)
        assert conn.execute(psycopg.sql.SQL("SELECT count({}) FROM {}").format(
            psycopg.sql.Identifier(col), ident)).fetchone()[0] == len(texts)
    assert rollback_app(db, cfg, APP, provider_for=provider_for)["space"] == LEGACY
