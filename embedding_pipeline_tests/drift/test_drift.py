"""Drift stats, checks, history, quality regression, alert delivery and the `drift` command.

Real PostgreSQL + pgvector and the real MiniLM-256 model; each check is shown failing on the
situation it exists for and passing again after `reembed` repairs it.
"""

from __future__ import annotations

import argparse
import json

import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from embedding_pipeline.cli import drift_commands
from embedding_pipeline.cli.common import run_command
from embedding_pipeline.config import load_config
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.drift import alerts
from embedding_pipeline.drift.stats import (
    ERROR,
    WARN,
    collect,
    ensure_drift_tables,
    evaluate,
    history,
    quality_regression,
    record,
)
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline_tests.support.drift_env import (
    SCHEMA,
    SPACE,
    TABLE,
    assert_no_content,
    write_config,
)


@pytest.fixture
def cfg(seeded, config_path, tmp_path):
    """40 documents embedded into the active minilm-256 table."""
    return load_config(write_config(config_path, tmp_path))


def checks(db, cfg):
    with db.connect() as conn:
        drifts = collect(conn, cfg, "documents")
    return {d.space: d for d in drifts}, {o.name: o for o in evaluate(cfg, drifts)}


def repair(db, cfg, providers):
    reembed(db, cfg, "documents", SPACE, providers[SPACE], build_hnsw=False)
    return checks(db, cfg)


def test_clean_space_passes_every_check(db, cfg):
    """A freshly embedded table must not alert: every check passes, one version, full coverage."""
    drifts, outcomes = checks(db, cfg)
    assert all(o.passed for o in outcomes.values()), [f.message for o in outcomes.values() for f in o.findings]
    c = drifts[SPACE].counts
    assert c.versions == {cfg.space(SPACE).model_version: 40}
    assert (c.coverage, c.stale, c.orphans, c.null_vectors, c.declared_dims) == (1.0, 0, 0, 0, 256)
    assert drifts[SPACE].version_pinned is True and drifts["minilm"].status == "shadow"


def test_foreign_model_version_fails_until_reembed(db, cfg, providers):
    """A row written by another writer after the CHECK was dropped is drift and blocks; reembed rewrites it."""
    with db.connect() as conn:
        ck = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'",
                          (sql.Identifier(SCHEMA, f"documents__{SPACE}").as_string(conn),)).fetchone()[0]
        tbl = sql.Identifier(SCHEMA, f"documents__{SPACE}")
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(tbl, sql.Identifier(ck)))
        vec = conn.execute(sql.SQL("SELECT embedding FROM {} WHERE source_id = 'doc00004'").format(tbl)).fetchone()[0]
        conn.execute(sql.SQL("DELETE FROM {} WHERE source_id = 'doc00003'").format(tbl))
        conn.execute(sql.SQL("INSERT INTO {} (source_id, model_version, content_sha256, embedding) SELECT id, "
                             "'other-model@0123456789abcdef', sha256(convert_to('other\n' || content, 'UTF8')), %s "
                             "FROM public.documents WHERE id = 'doc00003'").format(tbl), (vec,))
    drifts, outcomes = checks(db, cfg)
    version = outcomes["single_model_version"]
    assert not version.passed and version.severity == ERROR
    msg = version.findings[0].message
    assert TABLE in msg and "1 of 40" in msg and "other-model@0123456789abcdef" in msg and "CHECK constraint" in msg
    assert drifts[SPACE].version_pinned is False and drifts[SPACE].counts.version_share == pytest.approx(39 / 40)
    _, outcomes = repair(db, cfg, providers)
    assert outcomes["single_model_version"].passed


def test_deleted_source_rows_are_orphans_until_reembed(db, cfg, providers):
    """Vectors of hard- and soft-deleted rows are orphans (WARN); reembed deletes them."""
    with db.connect() as conn:
        conn.execute("DELETE FROM public.documents WHERE id = 'doc00001'")
        conn.execute("UPDATE public.documents SET deleted_at = now() WHERE id = 'doc00002'")
    drifts, outcomes = checks(db, cfg)
    orphans = outcomes["no_orphans"]
    assert not orphans.passed and orphans.severity == WARN and drifts[SPACE].counts.orphans == 2
    assert "2 vectors" in orphans.findings[0].message and TABLE in orphans.findings[0].message
    assert outcomes["coverage"].passed  # the 38 remaining eligible rows are all covered
    _, outcomes = repair(db, cfg, providers)
    assert outcomes["no_orphans"].passed


def test_edited_source_row_is_stale_until_reembed(db, cfg, providers):
    """An edited row keeps an old vector (ERROR on the active space) until reembed refreshes it."""
    with db.connect() as conn:
        conn.execute("UPDATE public.documents SET content = 'Rewritten: the meeting moved to Friday.' "
                     "WHERE id = 'doc00005'")
    drifts, outcomes = checks(db, cfg)
    stale = outcomes["no_stale_vectors"]
    assert not stale.passed and stale.severity == ERROR and drifts[SPACE].counts.stale == 1
    assert f"--space {SPACE}" in stale.findings[0].message
    _, outcomes = repair(db, cfg, providers)
    assert outcomes["no_stale_vectors"].passed


def test_missing_vector_fails_active_coverage_until_reembed(db, cfg, providers):
    """One eligible row without a vector breaks the active space's 100% coverage (ERROR)."""
    with db.connect() as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE source_id = 'doc00007'").format(
            sql.Identifier(SCHEMA, f"documents__{SPACE}")))
    _, outcomes = checks(db, cfg)
    cov = outcomes["coverage"]
    assert not cov.passed and cov.severity == ERROR
    assert "39 of 40" in cov.findings[0].message and "97.50% < 100.00%" in cov.findings[0].message
    _, outcomes = repair(db, cfg, providers)
    assert outcomes["coverage"].passed


def test_legacy_column_null_share_against_shadow_threshold(seeded, config_path, tmp_path, providers):
    """The in-place column reports its NULL share; below the shadow threshold it is a WARN, not an ERROR."""
    db = seeded
    c = load_config(write_config(config_path, tmp_path, shadow_coverage_threshold=0.6))
    with db.connect() as conn:
        rows = conn.execute("SELECT id, content FROM public.documents ORDER BY id LIMIT 20").fetchall()
        vecs = providers["minilm"].embed_documents([r[1] for r in rows])
        with conn.cursor() as cur:
            cur.executemany("UPDATE public.documents SET embedding = %s WHERE id = %s",
                            [(v, r[0]) for v, r in zip(vecs, rows, strict=True)])
    drifts, outcomes = checks(db, c)
    legacy = drifts["minilm"].counts
    assert (legacy.storage, legacy.null_vectors, legacy.null_share, legacy.coverage) == ("legacy_column", 20, 0.5, 0.5)
    cov = outcomes["coverage"]
    assert [(f.space, f.severity) for f in cov.findings] == [("minilm", WARN)] and cov.severity == WARN
    assert "public.documents.embedding" in cov.findings[0].message


def test_dimension_mismatch_fails(db, cfg):
    """A column declared 384-d under a space configured 512-d is a blocking ERROR naming both numbers."""
    wrong = cfg.model_copy(update={"spaces": {**cfg.spaces, "minilm": cfg.spaces["minilm"].model_copy(
        update={"dimensions": 512})}})
    _, outcomes = checks(db, wrong)
    dims = outcomes["dimensions_match"]
    assert not dims.passed and dims.severity == ERROR and [f.space for f in dims.findings] == ["minilm"]
    assert "declared 384-d" in dims.findings[0].message and "configured 512-d" in dims.findings[0].message


def test_history_appends_each_run_with_queue_stats(db, cfg):
    """Every run adds one row per space; change capture's queue numbers land in the same rows."""
    with db.connect() as conn:
        ensure_drift_tables(conn, SCHEMA)
        record(conn, SCHEMA, collect(conn, cfg, "documents"))
        lagging = collect(conn, cfg, "documents", queue_stats={"queue_depth": 12, "queue_lag_seconds": 1800.0})
        record(conn, SCHEMA, lagging)
        conn.commit()
        rows = history(conn, SCHEMA, "documents")
    assert [(r["space"], r["queue_depth"]) for r in rows] == [("minilm", None), (SPACE, None), ("minilm", 12),
                                                             (SPACE, 12)]
    assert rows[-1]["versions"] == {cfg.space(SPACE).model_version: 40} and rows[-1]["coverage"] == 1.0
    lag = {o.name: o for o in evaluate(cfg, lagging)}["queue_lag"]
    assert not lag.passed and lag.severity == WARN and "1800s" in lag.findings[0].message


def _stored_result(conn, space: str, ndcg: float, eval_set: str = "default", at: str = "now()") -> int:
    """An eval_reports row measuring ``space`` as the active space (what evaluate_active stores)."""
    ensure_schema(conn, "embedding_pipeline")
    rid = conn.execute(sql.SQL(
        "INSERT INTO embedding_pipeline.eval_reports (at, source, eval_set, kind, active_space, candidate_space, "
        "metrics) VALUES ({}, 'documents', %s, 'labeled', %s, %s, %s) RETURNING id").format(sql.SQL(at)),
        (eval_set, space, space, Jsonb({"mode": "active_only", "active": {"ndcg@10": ndcg}}))).fetchone()[0]
    conn.commit()
    return rid


def test_quality_first_result_becomes_the_baseline(db, config):
    """The first stored nDCG@10 of the space is its baseline, and it is not a regression; nothing stored: no baseline."""
    with db.connect() as conn:
        none = quality_regression(conn, config, "documents", SPACE, 0.80, eval_set="scifact")
        rid = _stored_result(conn, SPACE, 0.80, "scifact")
        first = quality_regression(conn, config, "documents", SPACE, 0.80, eval_set="scifact", report_id=rid)
    assert none["baseline"] is None and not none["regressed"]
    assert first["baseline_created"] and not first["regressed"] and (first["baseline"], first["baseline_report"]) == (
        0.80, rid)


def test_quality_regression_needs_more_than_the_margin(db, config):
    """A drop of exactly regression_margin (0.02) passes; a drop past it regresses; the baseline never moves."""
    with db.connect() as conn:
        _stored_result(conn, SPACE, 0.80)
        out = {}
        for name, value in (("within", 0.78), ("beyond", 0.7799), ("better", 0.90)):
            rid = _stored_result(conn, SPACE, value)
            out[name] = quality_regression(conn, config, "documents", SPACE, value, report_id=rid)
    within, beyond, better = out["within"], out["beyond"], out["better"]
    assert config.eval.regression_margin == 0.02
    assert not within["regressed"] and beyond["regressed"] and not better["regressed"]
    assert within["baseline"] == beyond["baseline"] == better["baseline"] == 0.80
    assert not any(r["baseline_created"] for r in out.values())
    assert beyond["drop"] == pytest.approx(0.0201)


def test_old_quality_baselines_table_is_folded_into_eval_reports_and_dropped(db, config):
    """An older install: a baseline that is the first result stays it, one an operator reset (by deleting the
    old row) becomes an accepted report, one without a report is dropped; the table is gone, reruns are no-ops."""
    with db.connect() as conn:
        _stored_result(conn, SPACE, 0.70, "a", at="now() - interval '3 days'")
        reset = _stored_result(conn, SPACE, 0.60, "a", at="now() - interval '2 days'")
        first_b = _stored_result(conn, SPACE, 0.50, "b", at="now() - interval '2 days'")
        conn.execute("CREATE TABLE embedding_pipeline.quality_baselines (source text, space text, eval_set text, "
                     "ndcg_at_10 double precision, at timestamptz, PRIMARY KEY (source, space, eval_set))")
        conn.execute("INSERT INTO embedding_pipeline.quality_baselines VALUES "
                     "('documents', %s, 'a', 0.60, now() - interval '2 days' + interval '1 second'), "
                     "('documents', %s, 'b', 0.50, now() - interval '1 day'), "
                     "('documents', %s, 'c', 0.99, now())", (SPACE, SPACE, SPACE))
        conn.commit()
        ensure_drift_tables(conn, "embedding_pipeline")
        ensure_drift_tables(conn, "embedding_pipeline")
        gone = conn.execute("SELECT to_regclass('embedding_pipeline.quality_baselines')").fetchone()[0]
        a = quality_regression(conn, config, "documents", SPACE, 0.60, eval_set="a")
        b = quality_regression(conn, config, "documents", SPACE, 0.50, eval_set="b")
        c = quality_regression(conn, config, "documents", SPACE, 0.50, eval_set="c")
    assert gone is None
    assert (a["baseline"], a["baseline_report"]) == (0.60, reset)
    assert (b["baseline"], b["baseline_report"]) == (0.50, first_b)
    assert c["baseline"] is None


def test_webhook_post_carries_numbers_not_content(db, cfg, webhook):
    """Alerts reach the webhook as Slack JSON with table, space, numbers and the fix, never document text."""
    with db.connect() as conn:
        conn.execute("UPDATE public.documents SET content = 'Rewritten: salary review for Anna' WHERE id = 'doc00005'")
        conn.execute("DELETE FROM public.documents WHERE id = 'doc00001'")
        conn.commit()
        with conn.transaction():
            ids = alerts.record_findings(conn, SCHEMA, evaluate(cfg, collect(conn, cfg, "documents")))
        report = alerts.deliver_pending(conn, SCHEMA, webhook.url)
        delivered = conn.execute("SELECT bool_and(delivered) FROM embedding_pipeline.alerts").fetchone()[0]
    assert sorted(report.delivered) == sorted(ids) and len(ids) == 2 and report.pending == 0 and delivered
    payloads = [p for _, _, p in webhook.captured]
    assert {ct for _, ct, _ in webhook.captured} == {"application/json"}
    assert all(set(p) == {"text", "blocks"} and p["blocks"] for p in payloads)
    text = " ".join(p["text"] for p in payloads)
    assert TABLE in text and SPACE in text and "1 vectors" in text and "reembed --source documents" in text
    assert "stale=1" in json.dumps(payloads) and "orphans=1" in json.dumps(payloads)
    assert_no_content(payloads)


def test_failing_webhook_keeps_alerts_pending(db, webhook):
    """A webhook answering 500 leaves the alert undelivered for the next pass, and the secret URL unlogged."""
    webhook.status = 500
    with db.connect() as conn:
        ensure_schema(conn, SCHEMA)
        with conn.transaction():
            alerts.record_alert(conn, SCHEMA, source="documents", space=SPACE, check_name="coverage",
                                severity=ERROR, message=f"{TABLE}: 39 of 40 eligible rows", details={"missing": 1})
        report = alerts.deliver_pending(conn, SCHEMA, webhook.url)
    assert report.delivered == [] and len(report.failed) == 1 and report.pending == 1
    assert "HTTP 500" in report.errors[0] and "SECRET-TOKEN" not in report.errors[0]


def test_cli_drift_json_lists_stats_and_fails_on_error(db, cfg, capsys, config_path, tmp_path):
    """`drift --json` prints per-space stats (versions, coverage, stale, orphans) and exits 1 on an ERROR check."""
    with db.connect() as conn:
        conn.execute("UPDATE public.documents SET content = 'Rewritten note' WHERE id = 'doc00009'")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    drift_commands.register(parser.add_subparsers(dest="command"))
    code = run_command(parser.parse_args(["--config", str(tmp_path / "drift.yaml"), "drift", "--source", "documents",
                                          "--json"]))
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    by_space = {r["space"]: r for r in out}
    assert set(by_space) == {"minilm", SPACE}
    row = by_space[SPACE]
    assert row["source"] == "documents" and row["versions"] == {cfg.space(SPACE).model_version: 40}
    assert (row["coverage"], row["stale"], row["orphans"]) == (1.0, 1, 0)
    assert [c["check"] for c in row["failed_checks"]] == ["no_stale_vectors"]
    with db.connect() as conn:
        history = conn.execute(f"SELECT space, stale FROM {SCHEMA}.drift_history WHERE source = 'documents' "
                               "ORDER BY space").fetchall()
        alerted = conn.execute(f"SELECT check_name FROM {SCHEMA}.alerts").fetchall()
    assert history == [("minilm", 0), (SPACE, 1)] and alerted == [("no_stale_vectors",)]
    run_command(parser.parse_args(["--config", str(tmp_path / "drift.yaml"), "drift", "--no-record", "--json"]))
    with db.connect() as conn:  # a read-only look adds nothing
        assert conn.execute(f"SELECT count(*) FROM {SCHEMA}.drift_history").fetchone()[0] == 2


def _mode_run(db, cfg, mode):
    with db.connect() as conn:
        ensure_drift_tables(conn, cfg.project_schema)
        drifts = collect(conn, cfg, "documents", mode=mode)
        with conn.transaction():
            record(conn, cfg.project_schema, drifts)
    return {d.space: d for d in drifts}, {o.name: o for o in evaluate(cfg, drifts, mode)}


def test_incremental_needs_capture_and_a_clean_full_check_else_runs_full(db, cfg):
    """Without a capture trigger, or before any full check, an incremental run is a full one and says why."""
    drifts, _ = _mode_run(db, cfg, "incremental")
    assert drifts[SPACE].mode == "full" and "no enabled capture trigger" in drifts[SPACE].mode_note
    from embedding_pipeline.embeddings.capture import enable_capture

    with db.connect() as conn:
        enable_capture(conn, cfg, "documents", mode="trigger")
        conn.commit()
    drifts, _ = _mode_run(db, cfg, "incremental")
    assert drifts[SPACE].mode == "full" and "predates capture" in drifts[SPACE].mode_note


def test_incremental_counts_changes_from_capture_exactly_as_full_does(db, cfg):
    """With the trigger on and a clean full check recorded, an edit, a soft delete, a hard delete and an
    insert are counted from the queue alone; the numbers match a full check of the same state."""
    from embedding_pipeline.embeddings.capture import enable_capture

    with db.connect() as conn:
        enable_capture(conn, cfg, "documents", mode="trigger")
        conn.commit()
    _mode_run(db, cfg, "full")  # the proof
    with db.connect() as conn:
        conn.execute("UPDATE public.documents SET content = 'Rewritten: lunch is at noon.' WHERE id = 'doc00005'")
        conn.execute("UPDATE public.documents SET deleted_at = now() WHERE id = 'doc00002'")
        conn.execute("DELETE FROM public.documents WHERE id = 'doc00001'")
        conn.execute("INSERT INTO public.documents (id, content) VALUES ('doc09999', 'A new row about kites.')")
        # Edited and put back: queued twice, its latest entry's digest equals the stored hash, so not stale.
        before = conn.execute("SELECT content FROM public.documents WHERE id = 'doc00006'").fetchone()[0]
        conn.execute("UPDATE public.documents SET content = 'Briefly something else.' WHERE id = 'doc00006'")
        conn.execute("UPDATE public.documents SET content = %s WHERE id = 'doc00006'", (before,))
        conn.commit()
        # The trigger said what each row is now, hashed as the engine hashes: the source is not read again.
        digests = dict(conn.execute(f"SELECT DISTINCT ON (source_id) source_id, digests ->> %s "
                                    f"FROM {SCHEMA}.change_queue ORDER BY source_id, id DESC",
                                    (cfg.space(SPACE).fingerprint,)).fetchall())
        stored = conn.execute(sql.SQL("SELECT content_sha256 FROM {} WHERE source_id = 'doc00006'").format(
            sql.Identifier(SCHEMA, f"documents__{SPACE}"))).fetchone()[0]
    assert digests["doc00001"] is None and digests["doc00002"] is None  # gone, filtered out: no digest
    assert bytes.fromhex(digests["doc00006"]) == bytes(stored)
    inc, inc_out = _mode_run(db, cfg, "incremental")
    d = inc[SPACE]
    assert d.mode == "incremental" and d.changed_rows == 5, d.mode_note
    assert "read from the source" not in d.mode_note
    assert (d.counts.stale, d.counts.orphans, d.counts.missing) == (1, 2, 1)
    assert not inc_out["no_stale_vectors"].passed and not inc_out["no_orphans"].passed
    assert not inc_out["coverage"].passed and inc_out["single_model_version"].passed
    with db.connect() as conn:
        full = {x.space: x for x in collect(conn, cfg, "documents", mode="full")}[SPACE].counts
    assert (full.stale, full.orphans, full.missing) == (1, 2, 1)
    # The dirty incremental row is not a proof: the next incremental run still builds on the clean full one.
    again, _ = _mode_run(db, cfg, "incremental")
    assert again[SPACE].mode == "incremental"
    # Entries without digests (the cursor's, the lazy path's, a trigger installed before them) are read
    # from the source by key instead, to the same numbers.
    with db.connect() as conn:
        conn.execute(f"UPDATE {SCHEMA}.change_queue SET eligible = NULL, digests = NULL WHERE source_id <> 'doc00005'")
        conn.commit()
    probed, _ = _mode_run(db, cfg, "incremental")
    d = probed[SPACE]
    assert (d.counts.stale, d.counts.orphans, d.counts.missing) == (1, 2, 1)
    assert "4 of them read from the source" in d.mode_note, d.mode_note


def test_version_mode_counts_versions_only_and_evaluates_only_its_checks(db, cfg):
    """A version-only run reports the distribution, evaluates no coverage/stale/orphan check (their counts
    were not taken) and leaves no drift_history row."""
    with db.connect() as conn:
        conn.execute("UPDATE public.documents SET content = 'Rewritten again.' WHERE id = 'doc00005'")
        conn.commit()
    drifts, outcomes = _mode_run(db, cfg, "version")
    assert drifts[SPACE].counts.versions == {cfg.space(SPACE).model_version: 40}
    assert set(outcomes) == {"single_model_version", "dimensions_match", "no_null_vectors", "queue_lag"}
    with db.connect() as conn:
        assert history(conn, cfg.project_schema, "documents") == []
