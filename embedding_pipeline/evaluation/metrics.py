"""Ranking metrics as BEIR, MTEB and sentence-transformers define them, and ranking agreement.

Every function takes a ranked list of document ids (best first) and, for the IR metrics, the
query's judgments ``{doc_id: grade}``. A grade <= 0 means "judged not relevant", as in
trec_eval/pytrec_eval (BEIR, MTEB); only grades > 0 are relevant documents.

Definitions (``R`` = relevant documents of the query, ``top`` = the first k ids of the ranking):

* ``precision@k`` = |top ∩ R| / k, k even when fewer than k ids were retrieved (trec_eval's P_k,
  sentence-transformers' Precision@k).
* ``recall@k`` = |top ∩ R| / |R|.
* ``mrr@k`` = 1 / rank of the first relevant id in top, 0 if none (BEIR's and ST's MRR@k).
* ``ndcg@k`` = DCG / IDCG with linear gain ``grade`` and discount ``1 / log2(rank + 1)``; the
  ideal ranking sorts every judged grade (retrieved or not) descending. This is trec_eval's
  ``ndcg_cut`` (graded), which BEIR and MTEB report. sentence-transformers'
  ``InformationRetrievalEvaluator`` only knows binary relevance (gain 1 per relevant hit); on
  binary qrels the two are identical, on graded qrels we follow trec_eval.
* ``map@k`` = (sum over relevant ids at rank r <= k of precision@r) / min(k, |R|). This follows
  sentence-transformers. pytrec_eval's ``map_cut_k`` (BEIR, MTEB) divides by |R| instead; the two
  differ only for queries with more than k relevant documents, which is rare at k = 100.

A document id repeated in a ranking counts once, at its first position, so a buggy retriever
that returns duplicates cannot score a relevant document twice.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

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


def _relevant(qrels: Mapping[Hashable, int]) -> set:
    return {doc for doc, grade in qrels.items() if grade > 0}


def precision_at_k(ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    rel = _relevant(qrels)
    return sum(1 for d in _top(ranked_ids, k) if d in rel) / k


def recall_at_k(ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    rel = _relevant(qrels)
    if not rel:
        return 0.0
    return sum(1 for d in _top(ranked_ids, k) if d in rel) / len(rel)


def mrr_at_k(ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    rel = _relevant(qrels)
    for rank, d in enumerate(_top(ranked_ids, k), start=1):
        if d in rel:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    gains = [max(qrels.get(d, 0), 0) for d in _top(ranked_ids, k)]
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    if idcg == 0:
        return 0.0
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains)) / idcg


def map_at_k(ranked_ids: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    rel = _relevant(qrels)
    if not rel:
        return 0.0
    hits = 0
    total = 0.0
    for rank, d in enumerate(_top(ranked_ids, k), start=1):
        if d in rel:
            hits += 1
            total += hits / rank
    return total / min(k, len(rel))


_FUNCS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k, "map": map_at_k, "precision": precision_at_k}


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
    keys = [f"{m}@{k}" for k in sorted(set(ks)) for m in METRICS]
    per_query: dict[Hashable, dict[str, float]] = {}
    for qid, judged in qrels.items():
        if not _relevant(judged):
            continue
        ranking = list(run.get(qid, ()))
        per_query[qid] = {f"{m}@{k}": _FUNCS[m](ranking, judged, k) for k in sorted(set(ks)) for m in METRICS}
    out: dict = {}
    for key in keys:
        values = [scores[key] for scores in per_query.values()]
        out[key] = float(np.mean(values)) if values else 0.0
    out["queries"] = len(per_query)
    out["per_query"] = per_query
    return out


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
