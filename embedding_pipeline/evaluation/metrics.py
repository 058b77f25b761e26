"""Ranking metrics as BEIR, MTEB and sentence-transformers define them, and ranking agreement.

The IR metrics are computed by ``pytrec_eval`` (Python bindings of trec_eval, the reference
implementation BEIR and MTEB use). Every function takes a ranked list of document ids (best
first) and, for the IR metrics, the query's judgments ``{doc_id: grade}``. A grade <= 0 means
"judged not relevant", as in trec_eval (BEIR, MTEB); only grades > 0 are relevant documents. Ids
are compared as strings, as trec_eval's are.

Definitions (``R`` = relevant documents of the query, ``top`` = the first k ids of the ranking),
with the trec_eval measure each comes from:

* ``precision@k`` = |top ∩ R| / k, k even when fewer than k ids were retrieved (``P_k``;
  sentence-transformers' Precision@k).
* ``recall@k`` = |top ∩ R| / |R| (``recall_k``).
* ``mrr@k`` = 1 / rank of the first relevant id in top, 0 if none (BEIR's and ST's MRR@k).
  trec_eval's ``recip_rank`` has no cut-off, so a first relevant id ranked below k scores 0.
* ``ndcg@k`` = DCG / IDCG with linear gain ``grade`` and discount ``1 / log2(rank + 1)``; the
  ideal ranking sorts every judged grade (retrieved or not) descending (``ndcg_cut_k``, graded,
  what BEIR and MTEB report). sentence-transformers' ``InformationRetrievalEvaluator`` only knows
  binary relevance (gain 1 per relevant hit); on binary qrels the two are identical.
* ``map@k`` = (sum over relevant ids at rank r <= k of precision@r) / min(k, |R|). This follows
  sentence-transformers. trec_eval's ``map_cut_k`` (BEIR, MTEB) has the same sum over |R|, so we
  rescale it by |R| / min(k, |R|); the two differ only for queries with more than k relevant
  documents, which is rare at k = 100.

A document id repeated in a ranking counts once, at its first position, so a buggy retriever
that returns duplicates cannot score a relevant document twice.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pytrec_eval

HEADLINE = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")
METRICS = ("ndcg", "recall", "mrr", "map", "precision")


def _top(ranked: Sequence[Hashable], k: int) -> list[Hashable]:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    seen: set = set()
    out = []
    for doc in ranked:
        if doc in seen:
            continue
        seen.add(doc)
        out.append(doc)
        if len(out) == k:
            break
    return out


def _scores(trec: Mapping[str, float], relevant: int, k: int) -> dict[str, float]:
    """Our metrics at k from one query's trec_eval measures."""
    rr = trec["recip_rank"]
    return {
        "ndcg": trec[f"ndcg_cut_{k}"],
        "recall": trec[f"recall_{k}"],
        "mrr": rr if rr and round(1 / rr) <= k else 0.0,
        "map": trec[f"map_cut_{k}"] * relevant / min(k, relevant),
        "precision": trec[f"P_{k}"],
    }


def evaluate_run(
    run: Mapping[Hashable, Sequence[Hashable]],
    qrels: Mapping[Hashable, Mapping[Hashable, int]],
    ks: Sequence[int] = (1, 3, 5, 10, 100),
) -> dict:
    """Mean of every metric at every k over the judged queries, plus each query's values.

    Queries whose judgments hold no grade > 0 are left out, as BEIR and MTEB do: no ranking can
    score on them. A judged query missing from ``run`` counts as an empty ranking (every metric 0,
    trec_eval's ``-c``), so a retriever that drops queries cannot raise its mean.

    Returns ``{"ndcg@10": ..., "recall@100": ..., ..., "queries": n, "per_query": {qid: {...}}}``.
    """
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"k must be >= 1, got {ks[0] if ks else 'no k'}")
    keys = [f"{m}@{k}" for k in ks for m in METRICS]
    judged = {qid: j for qid, j in qrels.items() if any(g > 0 for g in j.values())}
    trec_qrels = {str(qid): {str(d): int(g) for d, g in j.items()} for qid, j in judged.items()}
    # Strictly falling scores keep our order: trec_eval sorts by score and would break ties by id.
    trec_run = {}
    for qid in judged:
        top = _top([str(d) for d in run.get(qid, ())], ks[-1])
        trec_run[str(qid)] = {d: float(len(top) - i) for i, d in enumerate(top)}
    cut = ",".join(map(str, ks))
    measures = {f"ndcg_cut.{cut}", f"recall.{cut}", f"P.{cut}", f"map_cut.{cut}", "recip_rank"}
    trec = pytrec_eval.RelevanceEvaluator(trec_qrels, measures).evaluate(trec_run) if judged else {}
    per_query: dict[Hashable, dict[str, float]] = {}
    for qid, j in judged.items():
        relevant = sum(1 for g in j.values() if g > 0)
        at = {k: _scores(trec[str(qid)], relevant, k) for k in ks}
        per_query[qid] = {f"{m}@{k}": at[k][m] for k in ks for m in METRICS}
    out: dict = {}
    for key in keys:
        values = [scores[key] for scores in per_query.values()]
        out[key] = float(np.mean(values)) if values else 0.0
    out["queries"] = len(per_query)
    out["per_query"] = per_query
    return out


def _one(metric: str, ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    """One metric of one ranking; 0.0 when the judgments hold nothing relevant."""
    result = evaluate_run({0: ranked_ids}, {0: qrels}, ks=(k,))["per_query"]
    return result[0][f"{metric}@{k}"] if result else 0.0


def precision_at_k(ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    return _one("precision", ranked_ids, qrels, k)


def recall_at_k(ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    return _one("recall", ranked_ids, qrels, k)


def mrr_at_k(ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    return _one("mrr", ranked_ids, qrels, k)


def ndcg_at_k(ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    return _one("ndcg", ranked_ids, qrels, k)


def map_at_k(ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    return _one("map", ranked_ids, qrels, k)


def overlap_at_k(a: Sequence[Hashable], b: Sequence[Hashable], k: int) -> float:
    """Jaccard similarity of the two top-k id sets; 1.0 when both are empty."""
    sa, sb = set(_top(a, k)), set(_top(b, k))
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def rank_correlation(a: Sequence[Hashable], b: Sequence[Hashable], k: int) -> float:
    """Kendall's tau-b between two rankings over the union of their top-k ids.

    An id missing from one top-k gets rank k + 1 there, so every id the other ranking lacks
    ties at the bottom; tau-b (not tau-a) is the variant that corrects for those ties, and it is
    what ``scipy.stats.kendalltau`` computes by default. Identical top-k lists give 1.0; when
    one side has no order at all (an empty top-k) the coefficient is undefined and we return 0.0.
    """
    ta, tb = _top(a, k), _top(b, k)
    if ta == tb:
        return 1.0
    items = list(dict.fromkeys([*ta, *tb]))
    pos_a = {d: i + 1 for i, d in enumerate(ta)}
    pos_b = {d: i + 1 for i, d in enumerate(tb)}
    ra = np.array([pos_a.get(d, k + 1) for d in items], dtype=float)
    rb = np.array([pos_b.get(d, k + 1) for d in items], dtype=float)
    iu = np.triu_indices(len(items), k=1)
    da = np.sign(ra[:, None] - ra[None, :])[iu]
    db = np.sign(rb[:, None] - rb[None, :])[iu]
    denom = math.sqrt(float(np.count_nonzero(da)) * float(np.count_nonzero(db)))
    if denom == 0:
        return 0.0
    return float(np.sum(da * db) / denom)


def ann_recall_at_k(ann_ids: Sequence[Hashable], exact_ids: Sequence[Hashable], k: int) -> float:
    """Share of the exact top-k that the approximate (HNSW) search also returned in its top-k.

    The denominator is the exact top-k's size (k, or fewer on a tiny table), so a table smaller
    than k does not read as lost recall. 1.0 when the exact search found nothing.
    """
    exact = set(_top(exact_ids, k))
    if not exact:
        return 1.0
    return len(exact & set(_top(ann_ids, k))) / len(exact)
