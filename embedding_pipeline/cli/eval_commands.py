"""`embedding-pipeline eval`: retrieval quality of a space on a BEIR dataset, or a shadow eval.

``--dataset DIR`` (benchmark): the corpus is imported into a scratch table and registered as an
ad-hoc source in a scratch schema (``<project_schema>_eval``) with its own space registry and
bindings, so benchmark tables never show up in the production schema that cutover, drift and
deletion act on. The space's table is brought up to date with ``reembed`` (vectors of unchanged
documents are kept between runs; progress and ETA are logged), the split's queries are embedded
with the space's own query prompt and searched exactly (or through HNSW) in that table, and
the BEIR metrics are printed. JSON (``--json``), one space::

    {"dataset", "split", "space", "search", "k", "docs", "queries", "ndcg@10", "recall@10",
     "recall@100", "mrr@10", "map@100", "precision@10", ["ann_recall@10" with --search hnsw],
     "reembed": {...}, "timings": {...}}

with ``--compare NAME2``::

    {"dataset", "split", "search", "k", "docs", "queries",
     "spaces": {NAME: {the metric keys above, "reembed", "timings"}, NAME2: {...}},
     "agreement": {"overlap@1".."overlap@100", "rank_correlation@10"},
     "delta": {metric: NAME2 - NAME}}

``--source NAME`` (shadow eval, what the evaluation asset does): ``--space`` is compared with
the source's active space on its eval set (``--eval-set``, else the newest labeled set stored
for the source, else queries sampled once from its rows), one ``eval_reports`` row is stored
and the report written. Exit 1 when the gate fails. JSON: ``{"id", "source", "eval_set",
"kind", "active", "candidate", "gate_passed", "gate_reason", "tolerance", "metrics",
"report_path", "files"}``.
"""

from __future__ import annotations

import re
import time

from embedding_pipeline.cli.common import EXIT_CHECK_FAILED, add_json, emit
from embedding_pipeline.config import PipelineConfig, SourceConfig
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.evaluation.beir import (
    import_beir_to_table,
    load_beir,
    load_eval_set,
    load_labeled_set,
    store_eval_set,
)
from embedding_pipeline.evaluation.metrics import (
    HEADLINE,
    ann_recall_at_k,
    evaluate_run,
)
from embedding_pipeline.evaluation.runner import (
    KS,
    agreement,
    compare_spaces,
    pick_eval_set,
)
from embedding_pipeline.evaluation.search import search_target, search_target_batch
from embedding_pipeline.spaces.bindings import active_space

METRIC_KEYS = (*HEADLINE, "precision@10")


def scratch_names(config: PipelineConfig, dataset_name: str) -> tuple[str, str]:
    """(schema, source/table name) for a dataset: ``<project_schema>_eval`` and ``beir_<dirname>``."""
    slug = re.sub(r"[^a-z0-9_]+", "_", dataset_name.lower()).strip("_") or "dataset"
    name = f"beir_{slug}"[:40].rstrip("_")
    return f"{config.project_schema}"[:58] + "_eval", name


def scratch_config(config: PipelineConfig, schema: str, name: str, spaces: list[str]) -> PipelineConfig:
    source = SourceConfig(schema=schema, table=name, id_column="id", text_column="content",
                          active_space=spaces[0], spaces=spaces)
    return config.model_copy(update={"project_schema": schema, "sources": {name: source}})


def _space_run(ctx, cfg: PipelineConfig, source: str, space: str, ds, *, mode: str, k: int) -> dict:
    provider = ctx.provider(space)
    t0 = time.monotonic()
    stats = reembed(ctx.db, cfg, source, space, provider, build_hnsw=mode == "hnsw")
    t1 = time.monotonic()
    qids = list(ds.queries)
    vectors = provider.embed_queries([ds.queries[q] for q in qids])
    t2 = time.monotonic()
    with ctx.db.connect() as conn:
        target = search_target(conn, cfg, source, space)
        exact = dict(zip(qids, search_target_batch(conn, target, vectors, k=k, mode="exact")))
        t3 = time.monotonic()
        hnsw = dict(zip(qids, search_target_batch(conn, target, vectors, k=k, mode="hnsw"))) if mode == "hnsw" else None
        t4 = time.monotonic()
    run = hnsw if hnsw is not None else exact
    result = evaluate_run(run, ds.qrels, ks=KS)
    out = {key: result[key] for key in METRIC_KEYS}
    out["queries"] = result["queries"]
    if hnsw is not None:
        out["ann_recall@10"] = sum(ann_recall_at_k(hnsw[q], exact[q], 10) for q in qids) / max(len(qids), 1)
    out["reembed"] = {key: v for key, v in stats.to_json().items() if key in (
        "embedded", "deleted", "skipped", "altered", "eligible", "stored", "seconds", "rows_per_s", "index_built")}
    out["timings"] = {"reembed_s": round(t1 - t0, 3), "embed_queries_s": round(t2 - t1, 3),
                      "exact_search_s": round(t3 - t2, 3)} | ({"hnsw_search_s": round(t4 - t3, 3)} if hnsw else {})
    return {"metrics": out, "exact": exact, "run": run}


def cmd_eval(ctx, args):
    if args.source:
        return _shadow(ctx, args)
    if args.eval_set:
        raise ConfigError("--eval-set goes with --source; a --dataset brings its own queries and qrels")
    config = ctx.config
    spaces = [args.space] + ([args.compare] if args.compare else [])
    if len(set(spaces)) != len(spaces):
        raise ConfigError(f"--compare must name a space other than --space {args.space!r}")
    for s in spaces:
        config.space(s)  # unknown names stop here with the list of configured spaces
    ds = load_beir(args.dataset, args.split)
    schema, name = scratch_names(config, ds.name)
    cfg = scratch_config(config, schema, name, spaces)
    k = max(config.eval.top_k, max(KS))
    with ctx.db.connect() as conn:
        ensure_schema(conn, schema)
        docs = import_beir_to_table(conn, ds, schema, name)
        conn.commit()
    runs = {s: _space_run(ctx, cfg, name, s, ds, mode=args.search, k=k) for s in spaces}
    head = {"dataset": ds.name, "split": ds.split, "search": args.search, "k": k, "docs": docs,
            "queries": runs[spaces[0]]["metrics"]["queries"]}
    if not args.compare:
        payload = {**head, "space": args.space, **runs[args.space]["metrics"]}
        emit(args, payload, lambda: _text(head, {args.space: runs[args.space]["metrics"]}))
        return 0
    a, b = spaces
    agree, _ = agreement(runs[a]["run"], runs[b]["run"])
    payload = {**head, "spaces": {s: runs[s]["metrics"] for s in spaces}, "agreement": agree,
               "delta": {key: runs[b]["metrics"][key] - runs[a]["metrics"][key] for key in METRIC_KEYS}}
    emit(args, payload, lambda: _text(head, payload["spaces"], agree))
    return 0


def _shadow(ctx, args):
    config = ctx.config
    if args.compare:
        raise ConfigError("--compare goes with --dataset; with --source the space is compared with the active one")
    schema = config.project_schema
    with ctx.db.connect() as conn:
        ensure_schema(conn, schema)
        conn.commit()
        active = active_space(conn, schema, args.source)
        if active is None:
            raise ConfigError(f"source {args.source!r} has no active space yet; run `embedding-pipeline setup "
                              f"--source {args.source}` and `embedding-pipeline reembed --source {args.source}` first")
        if active == args.space:
            raise ConfigError(f"space {args.space!r} is the active space of {args.source!r}; name a shadow space")
        if args.eval_set:
            eval_set = load_eval_set(conn, schema, args.eval_set)
        else:
            eval_set = pick_eval_set(conn, config, args.source)
        conn.commit()
    result = compare_spaces(ctx.db, config, args.source, active, args.space, eval_set.name, ctx.provider,
                            k=config.eval.top_k)
    payload = {key: v for key, v in result.items() if key != "per_query"}
    m = result["metrics"]
    emit(args, payload, lambda: "\n".join([
        f"{args.source}: {active} (active) vs {args.space} (candidate) on {eval_set.name} ({eval_set.kind})",
        *(f"  {key:<12} {m['active'].get(key, 0):.4f}  {m['candidate'].get(key, 0):.4f}"
          for key in HEADLINE if key in m["active"]),
        f"  overlap@10   {m['agreement']['overlap@10']:.4f}",
        f"gate: {result['gate_reason']}", f"report: {result['report_path']}"]))
    return EXIT_CHECK_FAILED if result["gate_passed"] is False else 0


def _text(head: dict, per_space: dict, agree: dict | None = None) -> str:
    lines = [f"{head['dataset']} ({head['split']}): {head['docs']:,} docs, {head['queries']} queries, "
             f"{head['search']} search, top-{head['k']}"]
    names = list(per_space)
    lines.append(f"{'metric':<16}" + "".join(f"{n:>16}" for n in names))
    keys = [*METRIC_KEYS, *(["ann_recall@10"] if "ann_recall@10" in per_space[names[0]] else [])]
    for key in keys:
        lines.append(f"{key:<16}" + "".join(f"{per_space[n][key]:>16.4f}" for n in names))
    if agree:
        lines.append(f"agreement: overlap@10 {agree['overlap@10']:.4f}, "
                     f"Kendall tau-b@10 {agree['rank_correlation@10']:.4f}")
    return "\n".join(lines)


def register(sub):
    p = sub.add_parser("eval", help="retrieval metrics of a space on a BEIR dataset (nDCG@10, recall@100, ...)",
                       description=__doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", help="BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/)")
    what.add_argument("--source", help="configured source: shadow-evaluate --space against its active space")
    p.add_argument("--space", required=True, help="space to evaluate")
    p.add_argument("--eval-set", help="with --source: a stored eval set (default: newest labeled, else sampled)")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument("--compare", metavar="NAME2", help="a second space, evaluated side by side")
    p.add_argument("--search", choices=["exact", "hnsw"], default="exact",
                   help="exact scan (default) or the HNSW index; hnsw also reports recall@10 against exact")
    add_json(p)
    p.set_defaults(handler=cmd_eval)
    register_eval_set(sub)


def cmd_eval_set(ctx, args):
    """Store a labeled (queries + qrels) or unlabeled (queries only) eval set for a source."""
    config = ctx.config
    config.source(args.source)  # an unknown source stops here with the configured ones
    data = load_labeled_set(args.name, args.queries, args.qrels)
    with ctx.db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        stored = store_eval_set(conn, config.project_schema, args.name, data, source=args.source)
        judged = sum(len(j) for j in stored.qrels.values())
    summary = {"name": stored.name, "source": stored.source, "kind": stored.kind, "queries": len(stored.queries),
               "judgments": judged}
    emit(args, summary, f"eval set {stored.name!r} stored for source {stored.source}: {stored.kind}, "
                        f"{len(stored.queries)} queries, {judged} judgments. The shadow eval of {stored.source} "
                        "now uses it (newest labeled set), or name it with `eval --source ... --eval-set`.")


def register_eval_set(sub):
    p = sub.add_parser("eval-set", help="import a labeled eval set (BEIR queries.jsonl + qrels TSV) for a source")
    p.add_argument("--source", required=True, help="configured source whose ids the qrels name")
    p.add_argument("--name", required=True, help="eval set name (replaces a set of that name)")
    p.add_argument("--queries", required=True, help='queries.jsonl: one {"_id": ..., "text": ...} per line')
    p.add_argument("--qrels", help="qrels TSV (query-id, corpus-id, score; header optional); none: unlabeled")
    add_json(p)
    p.set_defaults(handler=cmd_eval_set)
