"""Shadow evaluation: the active space against a candidate, on the same queries, never mixed.

Each space embeds the eval queries with its own provider and query prompt and is searched in
its own table only (``evaluation.search``); the two rankings meet only as lists of ids.
Per space: IR metrics on labeled sets (``metrics.evaluate_run``), HNSW recall@10 against its
own exact search, coverage. Between the spaces: overlap@10 (Jaccard) and Kendall's tau-b @10.

The gate, stored in ``eval_reports.gate_passed``:

* labeled set: passed = candidate nDCG@10 >= the active space's quality baseline -
  ``eval.ndcg_tolerance``. The baseline (``baseline.quality_baseline``) is the one the nightly
  regression check reads too; the first labeled result of the active space, this run's own
  when there is none before it;
* unlabeled set: NULL. Agreement is not quality (a better model may disagree with the old one
  on purpose), so no verdict is recorded; overlap and, when the queries were sampled from the
  source, known-item MRR (does a query find the row it was taken from?) are reported. Whoever
  reads the gate decides what "no labeled evidence" permits.

``evaluate_active`` measures the active space alone on the source's newest labeled set; the
nightly drift job compares that with the same baseline (``drift.quality_regression``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

import numpy as np
from psycopg.types.json import Jsonb

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.connection import Database
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.coverage import space_counts
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.evaluation import queries as statements
from embedding_pipeline.evaluation.baseline import (
    EPS,
    Baseline,
    gate_on_baseline,
    quality_baseline,
)
from embedding_pipeline.evaluation.beir import (
    EvalSet,
    ensure_eval_tables,
    load_eval_set,
    sample_unlabeled_from_source,
    store_eval_set,
)
from embedding_pipeline.evaluation.metrics import (
    ann_recall_at_k,
    evaluate_run,
    overlap_at_k,
    rank_correlation,
)
from embedding_pipeline.evaluation.report import write_report
from embedding_pipeline.evaluation.search import search_target, search_target_batch
from embedding_pipeline.spaces.bindings import active_space
from embedding_pipeline.spaces.source import SourceTable, inspect_source

KS = (1, 3, 5, 10, 100)
ANN_K = 10
AGREE_K = 10
SAMPLE_QUERIES = 100


def _provider(providers, space: str):
    if isinstance(providers, Mapping):
        return providers[space]
    return providers(space)


def run_space(conn, config: PipelineConfig, source: SourceTable, space: str, provider, queries: Mapping[str, str],
              *, k: int) -> dict:
    """Exact top-k (and HNSW top-10 when indexed) rankings of one space, with timings and coverage."""
    target = search_target(conn, config, source, space)
    qids = list(queries)
    t0 = time.monotonic()
    vectors = provider.embed_queries([queries[q] for q in qids])
    t1 = time.monotonic()
    exact = dict(zip(qids, search_target_batch(conn, target, vectors, k=k, mode="exact")))
    t2 = time.monotonic()
    hnsw = None
    if target.hnsw_index:
        hnsw = dict(zip(qids, search_target_batch(conn, target, vectors, k=ANN_K, mode="hnsw")))
    t3 = time.monotonic()
    counts = space_counts(conn, config, source, space)
    return {"space": space, "storage": target.storage, "table": target.qualified, "exact": exact, "hnsw": hnsw,
            "coverage": counts.coverage, "stored": counts.covered, "eligible": counts.eligible,
            "timings": {"embed_queries_s": round(t1 - t0, 3), "exact_search_s": round(t2 - t1, 3),
                        "hnsw_search_s": round(t3 - t2, 3)}}


def space_metrics(run: dict, eval_set: EvalSet, known_item: bool) -> tuple[dict, dict]:
    """(summary metrics, per-query metrics) of one space's run."""
    summary = {"space": run["space"], "storage": run["storage"], "table": run["table"],
               "coverage": round(run["coverage"], 6), "stored": run["stored"], "eligible": run["eligible"],
               "timings": run["timings"]}
    per_query: dict[str, dict] = {q: {} for q in run["exact"]}
    if eval_set.kind == "labeled":
        result = evaluate_run(run["exact"], eval_set.qrels, ks=KS)
        summary.update({key: v for key, v in result.items() if key != "per_query"})
        for q, scores in result["per_query"].items():
            per_query[q].update(scores)
    else:
        summary["queries"] = len(run["exact"])
    if known_item:
        result = evaluate_run(run["exact"], {q: {q: 1} for q in run["exact"]}, ks=KS)
        summary.update({f"known_item_{m}": result[m] for m in ["mrr@10", *(f"recall@{k}" for k in KS)]})
    if run["hnsw"] is None:
        summary["hnsw_index"], summary[f"ann_recall@{ANN_K}"] = False, None
    else:
        values = {q: ann_recall_at_k(run["hnsw"][q], run["exact"][q], ANN_K) for q in run["exact"]}
        summary["hnsw_index"], summary[f"ann_recall@{ANN_K}"] = True, float(np.mean(list(values.values())))
        for q, v in values.items():
            per_query[q][f"ann_recall@{ANN_K}"] = v
    return summary, per_query


def agreement(a: Mapping[str, list], b: Mapping[str, list]) -> tuple[dict, dict]:
    """Mean overlap@k (several k) and Kendall tau-b @10 of two runs, plus per-query values."""
    qids = [q for q in a if q in b]
    per_query = {q: {f"overlap@{AGREE_K}": overlap_at_k(a[q], b[q], AGREE_K),
                     f"rank_correlation@{AGREE_K}": rank_correlation(a[q], b[q], AGREE_K)} for q in qids}
    summary = {f"overlap@{k}": float(np.mean([overlap_at_k(a[q], b[q], k) for q in qids])) if qids else 1.0 for k in KS}
    summary[f"rank_correlation@{AGREE_K}"] = (
        float(np.mean([v[f"rank_correlation@{AGREE_K}"] for v in per_query.values()])) if qids else 1.0)
    return summary, per_query


def _wins(active_pq: dict, cand_pq: dict, key: str = "ndcg@10") -> dict:
    deltas = {q: cand_pq[q][key] - active_pq[q][key]
              for q in active_pq if key in active_pq[q] and key in cand_pq.get(q, {})}
    return {"key": key, "wins": sum(d > EPS for d in deltas.values()), "losses": sum(d < -EPS for d in deltas.values()),
            "ties": sum(abs(d) <= EPS for d in deltas.values()), "deltas": deltas}


def gate(kind: str, active: dict, candidate: dict, tolerance: float,
         baseline: Baseline | None = None) -> tuple[bool | None, str]:
    """The candidate against the active space's baseline; ``baseline`` None: this run's active result is it."""
    if kind != "labeled":
        return None, (f"unlabeled eval set: no relevance judgments, so no quality verdict; "
                      f"overlap@{AGREE_K} is reported for review")
    base = baseline.ndcg_at_10 if baseline else active["ndcg@10"]
    passed, reason = gate_on_baseline(candidate["ndcg@10"], base, tolerance)
    where = (f"baseline from report #{baseline.report_id}" if baseline
             else "baseline measured in this report, its first")
    return passed, f"{reason} ({where}; active now {active['ndcg@10']:.4f})"


def _known_item(conn, source: SourceTable, eval_set: EvalSet) -> bool:
    """Whether every query id is an eligible row of the source (a set sampled from it)."""
    if eval_set.kind != "unlabeled" or eval_set.source != source.name or not eval_set.queries:
        return False
    found = conn.execute(statements.count_eligible_ids(source.eligible_rows()),
                         (list(eval_set.queries),)).fetchone()[0]
    return found == len(eval_set.queries)


def pick_eval_set(conn, config: PipelineConfig, source: str, *, n: int = SAMPLE_QUERIES, seed: int = 0) -> EvalSet:
    """The newest labeled set stored for the source, else its newest unlabeled one, else one sampled
    from the source's own rows (stored once, as ``<source>-sampled``, so every run uses the same)."""
    schema = config.project_schema
    ensure_eval_tables(conn, schema)
    with conn.transaction():
        conn.execute(statements.lock_eval_set(), (f"eval-set:{source}",))
        row = conn.execute(statements.select_newest_eval_set(schema), (source,)).fetchone()
        if row:
            return load_eval_set(conn, schema, row[0])
        c = config.source(source)
        queries = sample_unlabeled_from_source(conn, c.schema_, c.table, c.id_column, c.text_column, n, seed,
                                               row_filter=c.row_filter)
        if not queries:
            raise ConfigError(f"source {source!r} ({c.schema_}.{c.table}) has no rows with text to sample eval "
                              "queries from; store an eval set with store_eval_set(..., source=...) first")
        return store_eval_set(conn, schema, f"{source}-sampled", queries, source=source)


def labeled_set_name(conn, schema: str, source: str) -> str | None:
    ensure_eval_tables(conn, schema)
    row = conn.execute(statements.select_newest_eval_set(schema, labeled_only=True), (source,)).fetchone()
    return row[0] if row else None


def _store(conn, schema: str, *, source, eval_set, kind, active, candidate, metrics, passed, tolerance, path) -> int:
    return conn.execute(
        statements.insert_report(schema),
        (source, eval_set, kind, active, candidate, Jsonb(metrics), passed, tolerance, str(path))).fetchone()[0]


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def compare_spaces(db: Database, config: PipelineConfig, source: str, active: str, candidate: str,
                   eval_set_name: str, providers: Mapping | Callable, *, k: int = 100) -> dict:
    """Evaluate ``candidate`` against ``active`` on a stored eval set; store one eval_reports row.

    Returns ``{"id", "source", "eval_set", "kind", "active", "candidate", "k", "metrics",
    "gate_passed", "gate_reason", "tolerance", "report_path", "files", "per_query"}``; ``metrics``
    (what the row stores) holds ``active`` and ``candidate`` summaries, ``agreement``, ``delta``
    (candidate - active) and ``per_query`` win/loss counts on nDCG@10.
    """
    if active == candidate:
        raise ConfigError(f"compare_spaces needs two different spaces; got {active!r} twice")
    schema = config.project_schema
    k = max(k, max(KS))
    with db.connect() as conn:
        ensure_schema(conn, schema)
        conn.commit()
        eval_set = load_eval_set(conn, schema, eval_set_name)
        src = inspect_source(conn, source, config.source(source))
        known_item = _known_item(conn, src, eval_set)
        runs = {role: run_space(conn, config, src, name, _provider(providers, name), eval_set.queries, k=k)
                for role, name in (("active", active), ("candidate", candidate))}
        summaries, per_query = {}, {}
        for role, run in runs.items():
            summaries[role], per_query[role] = space_metrics(run, eval_set, known_item)
        agree, agree_pq = agreement(runs["active"]["exact"], runs["candidate"]["exact"])
        metrics = {"k": k, "queries": len(eval_set.queries), "judged_queries": summaries["active"].get("queries"),
                   "active": summaries["active"], "candidate": summaries["candidate"], "agreement": agree}
        wins = None
        if eval_set.kind == "labeled":
            wins = _wins(per_query["active"], per_query["candidate"])
            metrics["delta"] = {m: summaries["candidate"][m] - summaries["active"][m]
                                for m in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")}
            metrics["per_query"] = {key: wins[key] for key in ("key", "wins", "losses", "ties")}
        tolerance = config.eval.ndcg_tolerance
        baseline = (quality_baseline(conn, schema, source, active, eval_set.name) if eval_set.kind == "labeled"
                    else None)
        passed, reason = gate(eval_set.kind, summaries["active"], summaries["candidate"], tolerance, baseline)
        metrics["gate_reason"] = reason
        if eval_set.kind == "labeled":
            metrics["baseline"] = (baseline.to_json() if baseline else
                                   {"ndcg_at_10": summaries["active"]["ndcg@10"], "report_id": None})
        result = {"source": source, "eval_set": eval_set.name, "kind": eval_set.kind, "active": active,
                  "candidate": candidate, "k": k, "metrics": metrics, "gate_passed": passed, "gate_reason": reason,
                  "tolerance": tolerance,
                  "per_query": _per_query_table(per_query, agree_pq, wins, runs)}
        files = write_report(result, db.home / "reports" / "eval", f"{source}__{active}__vs__{candidate}__{_stamp()}")
        result["files"] = {key: str(p) for key, p in files.items()}
        result["report_path"] = result["files"]["markdown"]
        with conn.transaction():
            result["id"] = _store(conn, schema, source=source, eval_set=eval_set.name, kind=eval_set.kind,
                                  active=active, candidate=candidate, metrics=metrics, passed=passed,
                                  tolerance=tolerance, path=result["report_path"])
    return result


def _per_query_table(per_query: dict, agree_pq: dict, wins: dict | None, runs: dict) -> dict:
    """Per query: each space's metrics and top-10 ids, the agreement and the nDCG@10 delta (ids only, no text)."""
    out = {}
    for q in runs["active"]["exact"]:
        row = {role: {**per_query[role].get(q, {}), "top10": runs[role]["exact"][q][:10]} for role in per_query}
        row.update(agree_pq.get(q, {}))
        if wins is not None and q in wins["deltas"]:
            row["delta_ndcg@10"] = wins["deltas"][q]
        out[q] = row
    return out


def evaluate_active(db: Database, config: PipelineConfig, source: str, providers: Mapping | Callable) -> dict | None:
    """Measure the active space alone on the source's newest labeled eval set (None when there is none).

    For the nightly drift job, which compares it with the space's baseline and decides what a
    regression is (``drift.quality_regression``); so the stored eval_reports row (``candidate_space =
    active_space``, ``metrics.mode = 'active_only'``) carries no verdict: ``gate_passed`` is NULL.
    Returns ``{"id", "source", "space", "eval_set", "ndcg@10", "metrics", "report_path", "files"}``.
    """
    schema = config.project_schema
    with db.connect() as conn:
        ensure_schema(conn, schema)
        conn.commit()
        space = active_space(conn, schema, source)
        name = labeled_set_name(conn, schema, source)
        conn.commit()
        if space is None or name is None:
            return None
        eval_set = load_eval_set(conn, schema, name)
        src = inspect_source(conn, source, config.source(source))
        run = run_space(conn, config, src, space, _provider(providers, space), eval_set.queries, k=max(KS))
        summary, per_query = space_metrics(run, eval_set, known_item=False)
        reason = "active space measured alone: the drift job compares nDCG@10 with the space's quality baseline"
        metrics = {"mode": "active_only", "k": max(KS), "queries": len(eval_set.queries), "active": summary,
                   "gate_reason": reason}
        result = {"source": source, "eval_set": name, "kind": "labeled", "active": space, "candidate": None,
                  "k": max(KS), "metrics": metrics, "gate_passed": None, "gate_reason": reason, "tolerance": None,
                  "per_query": {q: {"active": {**per_query[q], "top10": run["exact"][q][:10]}} for q in run["exact"]}}
        files = write_report(result, db.home / "reports" / "eval", f"{source}__{space}__active__{_stamp()}")
        with conn.transaction():
            report_id = _store(conn, schema, source=source, eval_set=name, kind="labeled", active=space,
                               candidate=space, metrics=metrics, passed=None, tolerance=None, path=files["markdown"])
    return {"id": report_id, "source": source, "space": space, "eval_set": name, "ndcg@10": summary["ndcg@10"],
            "metrics": metrics, "report_path": str(files["markdown"]),
            "files": {key: str(p) for key, p in files.items()}}
