"""Cutover, rollback and deletion jobs, launched from the UI's Launchpad with their run config.

Each op calls the core library once. ``source`` and ``space`` are choices built from the loaded
config (launchpad.py), so a typo is refused before the run starts. A refusal fails the run with
every reason in its metadata and, in its message, what to materialize or launch in the UI; it
changes nothing. A forced cutover is recorded with the run id as part of the actor.
"""


import json

import dagster as dg
from pydantic import Field

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.cutover.deletion import delete_retired
from embedding_pipeline.cutover.switch import cutover, rollback
from embedding_pipeline.db.audit import who
from embedding_pipeline.defs.cutover.launchpad import choice, cutover_spaces, refusal
from embedding_pipeline.defs.cutover.schedules import build_schedules
from embedding_pipeline.defs.resources import PipelineResource
from embedding_pipeline.errors import EmbeddingPipelineError, RefusedError


class DeleteRetiredConfig(dg.Config):
    dry_run: bool = Field(False, description="report only, even when deletion_enabled is true")


def _actor(context: dg.OpExecutionContext) -> str:
    user = context.run.tags.get("dagster/user") if context.run else None
    return f"{user or who(None)} (dagster run {context.run_id[:8]})"


def _metadata(result: dict) -> dict:
    return {k: dg.MetadataValue.json(json.loads(json.dumps(v, default=str))) if isinstance(v, (list, dict))
            else (str(v) if v is not None else "-") for k, v in result.items()}


def _run(context: dg.OpExecutionContext, fn, *args, **kwargs) -> dg.Output:
    try:
        result = fn(*args, **kwargs)
    except RefusedError as e:
        # The config the core call got (if any) lets the hint name a sharded source's partitions.
        raise refusal(e, next((a for a in args if isinstance(a, PipelineConfig)), None)) from None
    except EmbeddingPipelineError as e:
        raise dg.Failure(description=str(e), allow_retries=False) from None
    context.log.info(json.dumps(result, default=str))
    return dg.Output(None, metadata=_metadata(result))


def one_op_job(name: str, op: dg.OpDefinition, description: str) -> dg.JobDefinition:
    """A Launchpad job of the cutover domain that runs one op with its run config."""
    @dg.job(name=name, tags={"domain": "cutover"}, description=description)
    def _job():
        op()
    return _job


@dg.op(out=dg.Out(dg.Nothing), description="Drop retired space tables past their retention (dry run unless enabled).")
def delete_retired_op(context: dg.OpExecutionContext, config: DeleteRetiredConfig, pipeline: PipelineResource):
    return _run(context, delete_retired, pipeline.database(), pipeline.config(),
                dry_run=True if config.dry_run else None, actor=_actor(context))


def build(config: PipelineConfig) -> dg.Definitions:
    sources = ", ".join(sorted(config.sources))
    Source = choice("source", config.sources)
    Space = choice("space", cutover_spaces(config, config.sources))

    class CutoverConfig(dg.Config):
        source: Source = Field(description="source table (one of the source partitions)")
        space: Space = Field(description="space to make active for that source")
        force: bool = Field(False, description="skip the gates (backup, coverage, eval, validator); recorded in the "
                                               "audit table with who and the reasons overridden")

    class RollbackConfig(dg.Config):
        source: Source = Field(description="source table to switch back to its previous space")

    @dg.op(out=dg.Out(dg.Nothing), description="Make a space the active space of a source (one transaction).")
    def cutover_op(context: dg.OpExecutionContext, config: CutoverConfig, pipeline: PipelineResource):
        return _run(context, cutover, pipeline.database(), pipeline.config(), config.source.value, config.space.value,
                    force=config.force, actor=_actor(context), provider_for=pipeline.provider)

    @dg.op(out=dg.Out(dg.Nothing), description="Switch a source back to its previous space (one transaction).")
    def rollback_op(context: dg.OpExecutionContext, config: RollbackConfig, pipeline: PipelineResource):
        return _run(context, rollback, pipeline.database(), pipeline.config(), config.source.value,
                    actor=_actor(context))

    cutover_job = one_op_job("cutover", cutover_op, f"Cut a source ({sources}) over to another space. Run config: "
                             "ops.cutover_op.config {source, space, force}.")
    rollback_job = one_op_job("rollback", rollback_op, f"Roll a source ({sources}) back to its previous space. Run "
                              "config: ops.rollback_op.config {source}.")
    delete_retired_job = one_op_job("delete_retired", delete_retired_op,
                                    "Drop retired space tables past retention, with a verified backup and no open "
                                    "rollback window; a dry run unless deletion_enabled.")

    return dg.Definitions(jobs=[cutover_job, rollback_job, delete_retired_job],
                          schedules=build_schedules(delete_retired_job))
