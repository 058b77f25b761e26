"""Retrieval metrics, checked by hand and against sentence-transformers; BEIR loading; eval sets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from psycopg import sql

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.evaluation.beir import (
    EvalSet,
    import_beir_to_table,
    load_beir,
    load_eval_set,
    query_from_text,
    sample_unlabeled_from_source,
    store_eval_set,
)
from embedding_pipeline.evaluation.metrics import (
    ann_recall_at_k,
    evaluate_run,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    overlap_at_k,
    precision_at_k,
    rank_correlation,
    recall_at_k,
)
from embedding_pipeline_tests.support.tiny_labeled import (
    CORPUS,
    QRELS,
    QUERIES,
    Precomputed,
)

L3 = math.log2(3)
REL_AC = {"a": 1, "c": 1}


def test_precision_divides_by_k_even_when_fewer_were_retrieved():
    """Precision@k divides by k, not by the number returned (trec_eval P_k and sentence-transformers)."""
    assert precision_at_k(["a", "b", "c", "d"], REL_AC, 3) == pytest.approx(2 / 3)
    assert precision_at_k(["a", "c"], REL_AC, 10) == pytest.approx(0.2)


def test_recall_is_share_of_all_relevant_docs():
    """Recall@k counts relevant docs found in the top k out of every relevant doc judged."""
    assert recall_at_k(["a", "b", "c"], REL_AC, 1) == 0.5
    assert recall_at_k(["a", "b", "c"], REL_AC, 3) == 1.0
    assert recall_at_k(["a"], {"a": 0}, 3) == 0.0


def test_mrr_counts_only_the_first_relevant_hit():
    """MRR counts only the first relevant hit, and nothing beyond k."""
    assert mrr_at_k(["x", "a", "c"], REL_AC, 10) == 0.5
    assert mrr_at_k(["x", "a", "c"], REL_AC, 1) == 0.0


def test_ndcg_binary_matches_the_textbook_formula():
    """nDCG discounts by log2(rank + 1) and normalises by the ideal ordering."""
    expected = (1 / L3 + 1 / 2) / (1 + 1 / L3)
    assert ndcg_at_k(["x", "a", "c"], REL_AC, 3) == pytest.approx(expected)
    assert ndcg_at_k(["a", "c", "x"], REL_AC, 3) == pytest.approx(1.0)


def test_ndcg_ideal_includes_relevant_docs_never_retrieved():
    """A relevant doc the system never returned still lowers nDCG through the ideal DCG."""
    assert ndcg_at_k(["a"], REL_AC, 10) == pytest.approx(1 / (1 + 1 / L3))


def test_ndcg_uses_graded_linear_gain_like_trec_eval():
    """Graded judgments weigh linearly (trec_eval ndcg_cut, what BEIR/MTEB report)."""
    graded = {"a": 2, "c": 1, "z": 0}
    assert ndcg_at_k(["c", "a"], graded, 10) == pytest.approx((1 + 2 / L3) / (2 + 1 / L3))


def test_map_denominator_is_min_of_k_and_relevant_count():
    """MAP@k divides by min(k, |R|), as sentence-transformers does (pytrec_eval divides by |R|)."""
    assert map_at_k(["a", "x", "c"], REL_AC, 10) == pytest.approx((1 + 2 / 3) / 2)
    assert map_at_k(["a", "x"], REL_AC, 1) == 1.0
    assert map_at_k(["x", "a"], REL_AC, 1) == 0.0


def test_duplicate_ids_count_once():
    """A retriever returning the same doc twice cannot score it twice."""
    assert precision_at_k(["a", "a", "b"], {"a": 1}, 2) == 0.5
    assert map_at_k(["a", "a"], {"a": 1, "b": 1}, 10) == 0.5


def test_evaluate_run_excludes_unjudged_and_zeroes_missing_queries():
    """Queries without a relevant doc are left out (BEIR); a judged query without a ranking scores 0."""
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    result = evaluate_run({"q1": ["a"], "q3": ["c"]}, qrels)
    assert result["queries"] == 2
    assert set(result["per_query"]) == {"q1", "q2"}
    for key in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100", "precision@1"):
        assert result[key] == pytest.approx(0.5), key
    assert result["per_query"]["q2"]["ndcg@10"] == 0.0


def test_overlap_is_jaccard_of_top_k():
    """Overlap is |A ∩ B| / |A ∪ B| of the two top-k sets, ignoring order."""
    assert overlap_at_k(["a", "b", "c", "z"], ["c", "b", "d"], 3) == pytest.approx(2 / 4)
    assert overlap_at_k([], [], 5) == 1.0


def test_rank_correlation_is_kendall_tau_b_with_missing_at_k_plus_1():
    """Kendall tau-b over the top-k union, absentees tied at k + 1, agrees with scipy."""
    from scipy.stats import kendalltau

    assert rank_correlation(["a", "b", "c"], ["a", "b", "c"], 3) == 1.0
    assert rank_correlation(["a", "b", "c"], ["c", "b", "a"], 3) == pytest.approx(-1.0)
    rng = np.random.default_rng(7)
    ids = [f"d{i}" for i in range(30)]
    for _ in range(20):
        a, b = list(rng.permutation(ids)), list(rng.permutation(ids))
        k = int(rng.integers(2, 12))
        union = list(dict.fromkeys(a[:k] + b[:k]))
        ra = [a[:k].index(d) + 1 if d in a[:k] else k + 1 for d in union]
        rb = [b[:k].index(d) + 1 if d in b[:k] else k + 1 for d in union]
        assert rank_correlation(a, b, k) == pytest.approx(kendalltau(ra, rb).statistic)


def test_ann_recall_is_share_of_exact_top_k_found():
    """ANN recall@k: how much of the exact top-k the index search returned."""
    assert ann_recall_at_k(["a", "c", "x", "y"], ["a", "b", "c", "d"], 4) == 0.5
    assert ann_recall_at_k(["a", "b"], ["b", "a"], 10) == 1.0
    assert ann_recall_at_k(["a"], [], 10) == 1.0


def test_metrics_match_sentence_transformers_on_real_minilm_rankings(provider_for):
    """Our means equal sentence-transformers' InformationRetrievalEvaluator on the same vectors."""
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
    )
    from sentence_transformers.util import cos_sim

    provider = provider_for("minilm")
    doc_ids, qids = list(CORPUS), list(QUERIES)
    dvec = provider.embed_documents([CORPUS[d] for d in doc_ids])
    qvec = provider.embed_queries([QUERIES[q] for q in qids])
    scores = qvec.astype(np.float64) @ dvec.astype(np.float64).T
    # Same tie order as the evaluator: score descending, then corpus id ascending.
    run = {q: [d for _, d in sorted(zip(-scores[i], doc_ids))] for i, q in enumerate(qids)}
    ours = evaluate_run(run, QRELS)

    evaluator = InformationRetrievalEvaluator(
        queries=QUERIES,
        corpus=CORPUS,
        relevant_docs={q: {d for d, g in j.items() if g > 0} for q, j in QRELS.items()},
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[1, 10, 100],
        map_at_k=[10, 100],
        score_functions={"cosine": cos_sim},
        write_csv=False,
    )
    model = Precomputed(dict(zip(QUERIES.values(), qvec)), dict(zip(CORPUS.values(), dvec)))
    theirs = evaluator.compute_all_metrics(model)["cosine"]

    assert ours["queries"] == len(evaluator.queries_ids) == 15
    pairs = {
        "ndcg@10": theirs["ndcg@k"][10],
        "recall@10": theirs["recall@k"][10],
        "recall@100": theirs["recall@k"][100],
        "mrr@10": theirs["mrr@k"][10],
        "map@100": theirs["map@k"][100],
        "map@10": theirs["map@k"][10],
        "precision@1": theirs["precision@k"][1],
    }
    for key, value in pairs.items():
        assert abs(ours[key] - float(value)) <= 1e-4, (key, ours[key], float(value))
    # The set is not trivially solved, so the comparison exercises partial scores (q16 has 20
    # relevant docs, so map@10 checks the min(k, |R|) denominator too).
    assert ours["mrr@10"] < 1.0 and ours["recall@10"] < 1.0 and ours["ndcg@10"] < 1.0
    assert ours["recall@100"] == 1.0


def _write_beir(root, corpus_lines, qrels_rows, queries=None):
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(line + "\n" for line in corpus_lines))
    queries = queries or [{"_id": "q1", "text": "first query"}, {"_id": "q2", "text": "second"},
                          {"_id": "q3", "text": "train-only query"}]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(r + "\n" for r in qrels_rows))


CORPUS_LINES = [
    json.dumps({"_id": "d1", "title": "Title One", "text": "body one"}),
    json.dumps({"_id": "d2", "title": "", "text": "  body two  "}),
    json.dumps({"_id": "d3", "text": "no title key"}),
]


def test_load_beir_reads_corpus_queries_and_split_qrels(tmp_path):
    """Title and text are joined and stripped as BEIR does; only the split's queries are kept."""
    _write_beir(tmp_path, CORPUS_LINES, ["q1\td1\t1", "q1\td2\t0", "q2\td3\t2"])
    ds = load_beir(tmp_path, "test")
    assert ds.corpus == {"d1": "Title One body one", "d2": "body two", "d3": "no title key"}
    assert ds.queries == {"q1": "first query", "q2": "second"}
    assert ds.qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    assert ds.name == tmp_path.name and ds.split == "test"


@pytest.mark.parametrize(
    "corpus, qrels, message",
    [
        (CORPUS_LINES[:1] + ['{"_id": "d2", "text": '], ["q1\td1\t1"], r"corpus\.jsonl:2: not valid JSON"),
        (CORPUS_LINES + [json.dumps({"title": "x", "text": "y"})], ["q1\td1\t1"], r"corpus\.jsonl:4: .*'_id'"),
        (CORPUS_LINES + [CORPUS_LINES[0]], ["q1\td1\t1"], r"corpus\.jsonl:4: duplicate _id 'd1'"),
        (CORPUS_LINES, ["q1\td1\t1", "q1\td2\tabc"], r"test\.tsv:3: score 'abc'"),
        (CORPUS_LINES, ["q1\td1"], r"test\.tsv:2: expected 3"),
        (CORPUS_LINES, ["q9\td1\t1"], r"test\.tsv: 1 query id\(s\) not in .*queries\.jsonl"),
    ],
)
def test_load_beir_names_file_and_line_of_bad_input(tmp_path, corpus, qrels, message):
    """A damaged dataset stops with a ConfigError naming the file and line, not a traceback."""
    _write_beir(tmp_path, corpus, qrels)
    with pytest.raises(ConfigError, match=message):
        load_beir(tmp_path, "test")


def test_load_beir_missing_split_names_the_file(tmp_path):
    """Asking for a split the dataset lacks names the missing qrels file."""
    _write_beir(tmp_path, CORPUS_LINES, ["q1\td1\t1"])
    with pytest.raises(ConfigError, match=r"qrels.dev\.tsv not found"):
        load_beir(tmp_path, "dev")


def _rows(conn, schema, table):
    q = sql.SQL("SELECT id, content, xmin::text FROM {} ORDER BY id").format(sql.Identifier(schema, table))
    return {i: (c, x) for i, c, x in conn.execute(q).fetchall()}


def test_import_beir_to_table_is_idempotent_and_syncs_changes(db, tmp_path):
    """Re-importing rewrites only changed rows and deletes rows that left the corpus."""
    _write_beir(tmp_path, CORPUS_LINES, ["q1\td1\t1"])
    ds = load_beir(tmp_path)
    with db.connect() as conn:
        assert import_beir_to_table(conn, ds, "beir", "tiny") == 3
        conn.commit()
        first = _rows(conn, "beir", "tiny")
        assert first["d1"][0] == "Title One body one"
        assert import_beir_to_table(conn, ds, "beir", "tiny") == 3
        conn.commit()
        assert _rows(conn, "beir", "tiny") == first
        ds.corpus["d2"] = "body two, edited"
        del ds.corpus["d3"]
        ds.corpus["d4"] = "a new document"
        assert import_beir_to_table(conn, ds, "beir", "tiny") == 3
        conn.commit()
        after = _rows(conn, "beir", "tiny")
    assert set(after) == {"d1", "d2", "d4"}
    assert after["d1"] == first["d1"]
    assert after["d2"][0] == "body two, edited" and after["d2"][1] != first["d2"][1]


def test_eval_sets_round_trip_labeled_and_unlabeled(db, tmp_path):
    """Labeled BEIR sets and sampled unlabeled sets come back from the project schema unchanged."""
    _write_beir(tmp_path, CORPUS_LINES, ["q1\td1\t1", "q1\td2\t0", "q2\td3\t2"])
    ds = load_beir(tmp_path)
    with db.connect() as conn:
        with pytest.raises(ConfigError, match="not found"):
            load_eval_set(conn, "ep", "tiny")
        stored = store_eval_set(conn, "ep", "tiny", ds)
        loaded = load_eval_set(conn, "ep", "tiny")
        assert loaded == stored
        assert (loaded.kind, loaded.source) == ("labeled", f"beir:{tmp_path.name}/test")
        assert loaded.queries == ds.queries and loaded.qrels == ds.qrels
        # Replacing a set drops its old queries and qrels.
        store_eval_set(conn, "ep", "tiny", EvalSet("tiny", "manual", "labeled", {"q7": "x"}, {"q7": {"d1": 1}}))
        assert load_eval_set(conn, "ep", "tiny").qrels == {"q7": {"d1": 1}}

        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text, deleted boolean DEFAULT false)")
        conn.cursor().executemany("INSERT INTO docs (id, body, deleted) VALUES (%s, %s, %s)",
                                  [(i, f"Document number {i} talks about topic {i % 5}. More text follows.", i % 7 == 0)
                                   for i in range(1, 101)] + [(101, "   ", False)])
        sample = sample_unlabeled_from_source(conn, "public", "docs", "id", "body", 10, seed=3, row_filter="NOT deleted")
        assert sample == sample_unlabeled_from_source(conn, "public", "docs", "id", "body", 10, 3, row_filter="NOT deleted")
        assert sample != sample_unlabeled_from_source(conn, "public", "docs", "id", "body", 10, 4, row_filter="NOT deleted")
        assert len(sample) == 10 and all(int(i) % 7 for i in sample)
        assert sample[next(iter(sample))].startswith("Document number")
        store_eval_set(conn, "ep", "probe", sample, source="public.docs")
        unlabeled = load_eval_set(conn, "ep", "probe")
        conn.commit()
    assert (unlabeled.kind, unlabeled.source, unlabeled.qrels) == ("unlabeled", "public.docs", {})
    assert unlabeled.queries == sample


def test_query_from_text_takes_first_sentence_capped_at_twelve_words():
    """Unlabeled queries are short, like real searches: first sentence, at most 12 words."""
    assert query_from_text("Cats sleep a lot.  Dogs bark.") == "Cats sleep a lot"
    long = " ".join(f"w{i}" for i in range(30))
    assert query_from_text(long) == " ".join(f"w{i}" for i in range(12))
