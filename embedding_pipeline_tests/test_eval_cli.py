"""`embedding-pipeline eval` on a tiny BEIR directory, with real MiniLM and the real database."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from psycopg import sql

from embedding_pipeline.cli import eval_commands
from embedding_pipeline.cli.common import run_command
from embedding_pipeline.config import load_config
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.evaluation.beir import EvalSet, store_eval_set
from embedding_pipeline.evaluation.metrics import HEADLINE, evaluate_run
from embedding_pipeline_tests.support.configs import TEST_CONFIG
from embedding_pipeline_tests.support.sources import make_documents
from embedding_pipeline_tests.support.tiny_labeled import CORPUS, QRELS, QUERIES


@pytest.fixture
def dataset(tmp_path):
    """The project's tiny labeled set written as a BEIR directory (q13 has no qrels, so it is not in the split)."""
    root = tmp_path / "Tiny-Set"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                                               for d, t in CORPUS.items()))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    rows = [f"{q}\t{d}\t{g}" for q, judged in QRELS.items() for d, g in judged.items()]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


def _eval(capsys, *argv) -> tuple[int, str, str]:
    """Run the eval subcommand through the shared error handling, as `embedding-pipeline` would."""
    parser = argparse.ArgumentParser(prog="embedding-pipeline")
    parser.add_argument("--config")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_commands.register(sub)
    capsys.readouterr()
    code = run_command(parser.parse_args(["--config", str(TEST_CONFIG), "eval", *argv]))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_prints_beir_metrics_equal_to_in_memory_search(db, dataset, capsys, provider_cache):
    """The JSON carries the BEIR headline metrics, and they match exact cosine search done in numpy."""
    code, out, err = _eval(capsys, "--dataset", str(dataset), "--space", "minilm-256", "--json")
    assert code == 0, err
    report = json.loads(out)
    for key in (*HEADLINE, "queries", "docs", "search"):
        assert key in report, key
    assert (report["docs"], report["queries"], report["search"], report["space"]) == (40, 15, "exact", "minilm-256")
    assert report["reembed"]["embedded"] == 40

    provider = provider_cache.get(load_config(TEST_CONFIG), "minilm-256")
    ids = sorted(CORPUS)
    dvec = provider.embed_documents([CORPUS[d] for d in ids]).astype(np.float64)
    qids = [q for q in QUERIES if q in QRELS and QRELS[q]]
    scores = provider.embed_queries([QUERIES[q] for q in qids]).astype(np.float64) @ dvec.T
    run = {q: [ids[j] for j in np.lexsort((np.arange(len(ids)), -scores[i]))] for i, q in enumerate(qids)}
    expected = evaluate_run(run, QRELS)
    for key in HEADLINE:
        assert abs(report[key] - expected[key]) <= 1e-4, (key, report[key], expected[key])


def test_rerun_reuses_vectors_and_leaves_the_production_schema_alone(db, dataset, capsys):
    """A second run embeds nothing; benchmark sources never enter the production registry or bindings."""
    assert _eval(capsys, "--dataset", str(dataset), "--space", "minilm-256", "--json")[0] == 0
    code, out, err = _eval(capsys, "--dataset", str(dataset), "--space", "minilm-256")
    assert code == 0, err
    assert "ndcg@10" in out and "tiny-set (test): 40 docs, 15 queries" in out.lower()
    code, out, err = _eval(capsys, "--dataset", str(dataset), "--space", "minilm-256", "--json")
    assert json.loads(out)["reembed"]["embedded"] == 0
    with db.connect() as conn:
        scratch = conn.execute(sql.SQL("SELECT source, space, table_schema, table_name FROM {}.bindings").format(
            sql.Identifier("embedding_pipeline_eval"))).fetchall()
        production = conn.execute("SELECT to_regclass('embedding_pipeline.bindings')").fetchone()[0]
    assert scratch == [("beir_tiny_set", "minilm-256", "embedding_pipeline_eval", "beir_tiny_set__minilm-256")]
    assert production is None


def test_compare_two_spaces_side_by_side_through_hnsw(db, dataset, capsys):
    """--compare reports both spaces and their agreement; --search hnsw adds HNSW recall against exact."""
    code, out, err = _eval(capsys, "--dataset", str(dataset), "--space", "minilm-256", "--compare", "minilm",
                           "--search", "hnsw", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["search"] == "hnsw" and set(report["spaces"]) == {"minilm-256", "minilm"}
    for metrics in report["spaces"].values():
        assert metrics["ann_recall@10"] == 1.0 and 0.5 < metrics["ndcg@10"] < 1.0
        assert metrics["reembed"]["index_built"] is True
    assert 0.5 < report["agreement"]["overlap@10"] <= 1.0
    assert report["delta"]["ndcg@10"] == pytest.approx(
        report["spaces"]["minilm"]["ndcg@10"] - report["spaces"]["minilm-256"]["ndcg@10"])


def test_bad_arguments_exit_2_with_a_message(db, dataset, tmp_path, capsys):
    """An unknown space or a missing dataset stops with exit 2 and names what is wrong."""
    code, _, err = _eval(capsys, "--dataset", str(dataset), "--space", "nope")
    assert code == 2 and "unknown space 'nope'" in err
    code, _, err = _eval(capsys, "--dataset", str(tmp_path / "missing"), "--space", "minilm-256")
    assert code == 2 and "missing not found" in err


def test_shadow_eval_of_a_configured_source_exits_1_when_the_gate_fails(db, capsys, provider_cache):
    """`eval --source` stores a report like the asset; a half-built candidate fails the gate and exits 1."""
    cfg = load_config(TEST_CONFIG)
    providers = {s: provider_cache.get(cfg, s) for s in ("minilm", "minilm-256")}
    with db.connect() as conn:
        make_documents(conn, 0)
        vectors = providers["minilm"].embed_documents(list(CORPUS.values()))
        conn.cursor().executemany("INSERT INTO public.documents (id, content, embedding) VALUES (%s, %s, %s)",
                                  list(zip(CORPUS, CORPUS.values(), vectors)))
        ensure_schema(conn, cfg.project_schema)
        conn.commit()
        prepare_source(conn, cfg, "documents", providers.__getitem__, spaces=["minilm", "minilm-256"])
    reembed(db, cfg, "documents", "minilm-256", providers["minilm-256"], ids=sorted(CORPUS)[::2])

    code, out, err = _eval(capsys, "--source", "documents", "--space", "minilm-256", "--json")
    assert code == 0, err
    unlabeled = json.loads(out)
    assert (unlabeled["kind"], unlabeled["gate_passed"], unlabeled["active"]) == ("unlabeled", None, "minilm")
    assert unlabeled["metrics"]["candidate"]["coverage"] == 0.5

    with db.connect() as conn:
        store_eval_set(conn, cfg.project_schema, "tiny", EvalSet("tiny", "documents", "labeled", QUERIES, QRELS),
                       source="documents")
    code, out, err = _eval(capsys, "--source", "documents", "--space", "minilm-256", "--json")
    labeled = json.loads(out)
    assert code == 1 and (labeled["kind"], labeled["gate_passed"]) == ("labeled", False)
    assert "candidate nDCG@10" in labeled["gate_reason"]
    with db.connect() as conn:
        rows = conn.execute(sql.SQL("SELECT kind, gate_passed FROM {}.eval_reports ORDER BY id").format(
            sql.Identifier(cfg.project_schema))).fetchall()
    assert rows == [("unlabeled", None), ("labeled", False)]


def test_eval_set_import_from_the_cli(db, dataset, capsys):
    """`eval-set` stores a labeled set from BEIR-format files; the source's shadow eval then finds it."""
    from embedding_pipeline.evaluation.beir import load_eval_set

    parser = argparse.ArgumentParser(prog="embedding-pipeline")
    parser.add_argument("--config")
    eval_commands.register(parser.add_subparsers(dest="command", required=True))

    def run(*argv):
        capsys.readouterr()
        code = run_command(parser.parse_args(["--config", str(TEST_CONFIG), "eval-set", *argv]))
        return code, capsys.readouterr()

    code, out = run("--source", "documents", "--name", "docs-labeled", "--queries", str(dataset / "queries.jsonl"),
                    "--qrels", str(dataset / "qrels" / "test.tsv"), "--json")
    assert code == 0, out.err
    summary = json.loads(out.out)
    judged = {q: j for q, j in QRELS.items() if j}
    assert summary == {"name": "docs-labeled", "source": "documents", "kind": "labeled", "queries": len(judged),
                       "judgments": sum(len(j) for j in QRELS.values())}
    with db.connect() as conn:
        stored = load_eval_set(conn, "embedding_pipeline", "docs-labeled")
    assert stored.kind == "labeled" and stored.source == "documents"
    assert {q: stored.qrels[q] for q in judged} == judged
    # A qrels file that names a query the queries file lacks is refused, naming both files.
    bad = dataset / "bad.tsv"
    bad.write_text("q-missing\td1\t1\n")
    code, out = run("--source", "documents", "--name", "x", "--queries", str(dataset / "queries.jsonl"),
                    "--qrels", str(bad))
    assert code == 2 and "q-missing" in out.err and "queries.jsonl" in out.err
