"""One shadow-eval asset per space, partitioned by source table, with a blocking quality gate.

A run compares the source's active space (read from the bindings, so it follows cutovers)
with this space, if this space is a shadow candidate for the source, on the source's eval set:
the newest labeled set stored for it, else queries sampled once from its own rows. The result
is a row in ``eval_reports`` (what the cutover gate reads) and a report with a Markdown table,
a PNG plot and a JSON artifact. The check ``ndcg_gate`` blocks downstream work when the
candidate's nDCG@10 is below the active's minus ``eval.ndcg_tolerance``; on unlabeled sets it
passes with the overlap reported and no verdict stored (see ``evaluation.runner``).
"""

from pathlib import Path

import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.defs.embeddings.assets import source_dep
from embedding_pipeline.defs.resources import (
    PipelineResource,
    asset_name,
    source_partitions,
)
from embedding_pipeline.evaluation.report import inline_markdown
from embedding_pipeline.evaluation.runner import compare_spaces, pick_eval_set
from embedding_pipeline.spaces.bindings import active_space, binding

CHECK = "ndcg_gate"


def eval_asset_key(space: str) -> dg.AssetKey:
    return dg.AssetKey(["evaluation", f"shadow_{asset_name(space)}"])


def _skip(reason: str) -> dg.MaterializeResult:
    # Nothing was evaluated, so nothing passed: a WARN failure that says why (a green gate here would
    # read as "the candidate is good" in the UI, and cutover would refuse it anyway).
    return dg.MaterializeResult(metadata={"skipped": reason}, check_results=[
        dg.AssetCheckResult(check_name=CHECK, passed=False, severity=dg.AssetCheckSeverity.WARN,
                            description=f"nothing evaluated: {reason}", metadata={"skipped": reason})])


def _result(result: dict) -> dg.MaterializeResult:
    m, files = result["metrics"], result["files"]
    act, cand = m["active"], m["candidate"]
    numbers = {"overlap_at_10": m["agreement"]["overlap@10"],
               "rank_correlation_at_10": m["agreement"]["rank_correlation@10"]}
    if result["kind"] == "labeled":
        numbers.update(ndcg_at_10_active=act["ndcg@10"], ndcg_at_10_candidate=cand["ndcg@10"],
                       recall_at_100_candidate=cand["recall@100"])
    for role, s in (("active", act), ("candidate", cand)):
        if s.get("ann_recall@10") is not None:
            numbers[f"hnsw_recall_at_10_{role}"] = s["ann_recall@10"]
    meta = {key: dg.FloatMetadataValue(round(float(v), 6)) for key, v in numbers.items()}
    passed = result["gate_passed"] is True
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(inline_markdown(result, Path(files["png"]))),
            "plot": dg.MetadataValue.path(files["png"]),
            "json_report": dg.MetadataValue.path(files["json"]),
            "markdown_report": dg.MetadataValue.path(files["markdown"]),
            "eval_report_id": result["id"],
            "eval_set": result["eval_set"],
            "kind": result["kind"],
            "active_space": result["active"],
            "candidate_space": result["candidate"],
            "gate": "no verdict" if result["gate_passed"] is None else ("passed" if passed else "failed"),
            **meta,
        },
        check_results=[dg.AssetCheckResult(
            # No verdict (an unlabeled set) is not a pass: WARN, with the reason; a failed gate is ERROR.
            check_name=CHECK, passed=passed, severity=dg.AssetCheckSeverity.ERROR if result["gate_passed"] is False
            else dg.AssetCheckSeverity.WARN,
            description=result["gate_reason"] if result["gate_passed"] is not None else
            f"no verdict: {result['gate_reason']}. Store a labeled eval set (`embedding-pipeline eval-set`) and "
            "materialize this asset again",
            metadata={"gate_passed": str(result["gate_passed"]), "tolerance": float(result["tolerance"]),
                      "eval_report_id": result["id"], **meta})])


def _build_shadow_eval_asset(*, space: str, config: PipelineConfig, partitions: dg.PartitionsDefinition,
                             deps: list[dg.AssetKey]) -> dg.AssetsDefinition:
    key = eval_asset_key(space)

    @dg.asset(
        key=key,
        group_name="evaluation",
        partitions_def=partitions,
        deps=deps,
        description=f"Shadow retrieval eval of space `{space}` against the source's active space: "
                    "nDCG@10, recall@10/@100, MRR@10, MAP@100, overlap@10, HNSW recall@10; stored in eval_reports.",
        kinds={"postgres", "pgvector"},
        tags={"space": space},
        check_specs=[dg.AssetCheckSpec(
            CHECK, asset=key, blocking=True,
            description=f"candidate `{space}` nDCG@10 >= active nDCG@10 - eval.ndcg_tolerance on labeled eval sets "
                        "(unlabeled sets: overlap@10 reported, no verdict)")],
    )
    def _asset(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        config = pipeline.config()
        source = context.partition_key
        if space not in config.spaces_for(source):
            return _skip(f"space {space} is not configured for source {source}")
        db = pipeline.database()
        schema = config.project_schema
        with db.connect() as conn:
            ensure_schema(conn, schema)
            conn.commit()
            active = active_space(conn, schema, source)
            own = binding(conn, schema, source, space)
            if active is None:
                return _skip(f"source {source} has no active space yet; run `embedding-pipeline setup` first")
            if active == space:
                return _skip(f"space {space} is the active space of {source}")
            if own is not None and own.status != "shadow":
                return _skip(f"space {space} is {own.status} for {source}, not a shadow candidate")
            eval_set = pick_eval_set(conn, config, source)
            conn.commit()
        context.log.info(f"{source}: {active} (active) vs {space} on eval set {eval_set.name} ({eval_set.kind}, "
                         f"{len(eval_set.queries)} queries)")
        result = compare_spaces(db, config, source, active, space, eval_set.name, pipeline.provider,
                                k=config.eval.top_k)
        context.log.info(result["gate_reason"])
        return _result(result)

    return _asset


def build(config: PipelineConfig) -> dg.Definitions:
    partitions = source_partitions(config)
    spaces = sorted({s for src in config.sources for s in config.spaces_for(src)})
    # An eval compares two spaces: this candidate and the source's active one. The active space is the
    # configured active_space (the legacy column has no embeddings asset); a later cutover to another
    # space is read from the bindings at run time and is not drawn as lineage.
    active = {config.source(src).active_space for src in config.sources} & set(spaces)
    assets = [_build_shadow_eval_asset(space=s, config=config, partitions=partitions,
                                       deps=[source_dep(d, config) for d in sorted({s} | active)])
              for s in spaces]
    job = dg.define_asset_job("shadow_eval", selection=dg.AssetSelection.groups("evaluation"),
                              partitions_def=partitions,
                              description="Compare every shadow space of one source table with its active space.")
    return dg.Definitions(assets=assets, jobs=[job])
