"""`make demo`: the whole migration on the embedded database, end to end.

Seeds Honcho-shaped tables with legacy MiniLM vectors, then runs what an operator would:
register the spaces, re-embed both tables into the new spaces through Dagster (so the runs
show up in the UI afterwards), validate, back up, evaluate, cut over, search, roll back and
cut over again, and print the status. Every step uses the same core functions as the CLI.
The Dagster runs come from the caller (the CLI) as a ``Materialize`` callable: the core
library never imports the Dagster layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.connection import redact
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.local.services import ensure_e5_servers
from embedding_pipeline.spaces.validator import validate

log = logging.getLogger("embedding_pipeline.local.demo")
TARGET_SPACE = "e5-small"


# (source partition, spaces) -> {"run_id": str, "materializations": [{"space": str, **metadata}]}
Materialize = Callable[[str, list[str]], dict]


def _step(title: str):
    print(f"\n== {title}", flush=True)


def seed(ctx, args) -> None:
    from embedding_pipeline.local.demo_data import create_demo_tables, seed_demo

    _step("seed the demo tables (Honcho-shaped, legacy all-MiniLM-L6-v2 vectors)")
    with ctx.db.connect() as conn:
        create_demo_tables(conn)
        conn.commit()
        counts = seed_demo(conn, ctx.provider("minilm"), n_documents=args.documents, n_messages=args.messages)
    print(f"   {counts}")


def reembed_through_dagster(ctx, config: PipelineConfig, materialize: Materialize) -> None:
    _step(f"register spaces and re-embed both tables into {', '.join(config.spaces_for('documents'))} (Dagster runs)")
    with ctx.db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        for source in config.sources:
            prepare_source(conn, config, source, ctx.provider)
    for source in config.sources:
        t = time.monotonic()
        result = materialize(source, list(config.spaces_for(source)))
        for md in result["materializations"]:
            print(f"   {source} -> {md['space']}: embedded {md['rows_embedded']}, "
                  f"coverage {md['coverage_pct']}%, {md['rows_per_s']} rows/s")
        print(f"   run {result['run_id'][:8]} ok in {time.monotonic() - t:.1f}s")


def run_validation(ctx, config: PipelineConfig) -> None:
    _step("validate: declared dimensions, registered identities, canary vectors")
    with ctx.db.connect() as conn:
        report = validate(conn, config, ctx.provider)
    for c in report.checks:
        print(f"   {'ok  ' if c.ok else 'FAIL'} {c.message}")
    if not report.ok:
        raise RuntimeError("validation failed")


def backups(ctx, config: PipelineConfig) -> None:
    from embedding_pipeline.backup.targets import backup_source

    _step("backup-before: pg_dump of each source and its embedding tables, verified by a restore")
    for source in config.sources:
        report, _ = backup_source(ctx.db, config, source)
        if not report.verified:
            raise RuntimeError(f"backup of {source} did not verify: {report.verify_error}")
        tables = ", ".join(f"{t['table']} ({t['rows']})" for t in report.to_json()["tables"])
        print(f"   {source}: verified {report.manifest}\n     {tables}")


def eval_sets(ctx, config: PipelineConfig) -> None:
    """Labeled sets: topic queries in English and Polish, relevant = every live row of the topic."""
    from embedding_pipeline.evaluation.beir import EvalSet, store_eval_set
    from embedding_pipeline.local.demo_data import (
        demo_eval_queries,
        demo_message_qrels,
        demo_qrels,
    )

    _step("store the labeled eval sets (topic queries, English and Polish)")
    schema = config.project_schema
    queries = demo_eval_queries()
    texts = {q["query_id"]: q["text"] for q in queries}
    with ctx.db.connect() as conn:
        for source, qrels in (("documents", demo_qrels(conn, queries)),
                              ("message_embeddings", demo_message_qrels(conn, queries))):
            name = f"demo-{source}-topics"
            store_eval_set(conn, schema, name, EvalSet(name, source, "labeled", texts, qrels), source=source)
            print(f"   {name}: {len(texts)} queries, {sum(map(len, qrels.values()))} judgements")
        conn.commit()


def shadow_eval(ctx, config: PipelineConfig) -> None:
    from embedding_pipeline.evaluation.runner import compare_spaces, labeled_set_name

    _step(f"shadow evaluation: {config.source('documents').active_space} (active) vs {TARGET_SPACE}, never mixed")
    for source in config.sources:
        with ctx.db.connect() as conn:
            name = labeled_set_name(conn, config.project_schema, source)
        r = compare_spaces(ctx.db, config, source, config.source(source).active_space, TARGET_SPACE, name, ctx.provider)
        m = r["metrics"]
        a, c = m["active"], m["candidate"]
        print(f"   {source}: nDCG@10 {a['ndcg@10']:.3f} -> {c['ndcg@10']:.3f}, recall@100 {a['recall@100']:.3f} -> "
              f"{c['recall@100']:.3f}; gate {'passed' if r['gate_passed'] else 'FAILED'} ({r['report_path']})")


def switch_and_search(ctx, config: PipelineConfig) -> None:
    from embedding_pipeline.cutover.status import format_status, status
    from embedding_pipeline.cutover.switch import cutover, rollback
    from embedding_pipeline.read_path.search import search

    def show_search(label):
        result = search(ctx.db, config, "documents", "jak podlewać pomidory w ogrodzie", k=3, provider_for=ctx.provider)
        print(f"   search ({label}) answered by space {result.space}: {[h.source_id for h in result.hits]}")

    _step(f"cutover of both tables to {TARGET_SPACE} (gates: backup, coverage, stale, eval, validator)")
    show_search("before")
    for source in config.sources:
        r = cutover(ctx.db, config, source, TARGET_SPACE, provider_for=ctx.provider, actor="demo")
        print(f"   {source}: {r.get('previous_space') or r.get('from')} -> {TARGET_SPACE}")
    show_search("after cutover")
    _step("rollback of both tables")
    for source in config.sources:
        rollback(ctx.db, config, source, actor="demo")
    show_search("after rollback")
    _step(f"cutover again to {TARGET_SPACE}")
    for source in config.sources:
        cutover(ctx.db, config, source, TARGET_SPACE, provider_for=ctx.provider, actor="demo")
    show_search("final")
    _step("status")
    print(format_status(status(ctx.db, config)))


def run_demo(ctx, args, materialize: Materialize) -> int:
    config = ctx.config
    _step("database")
    print(f"   {redact(ctx.db.url)} ({'embedded' if ctx.db.embedded else 'external'})")
    ensure_e5_servers(config, log=lambda m: print(f"   {m}"))
    seed(ctx, args)
    reembed_through_dagster(ctx, config, materialize)
    run_validation(ctx, config)
    backups(ctx, config)
    eval_sets(ctx, config)
    shadow_eval(ctx, config)
    switch_and_search(ctx, config)
    print("\ndemo finished: open the UI with `make dev`")
    return 0
