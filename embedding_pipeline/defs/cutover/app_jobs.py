"""App column jobs (``apps.<app>.cutover: column``): stage, cut over and roll back an app's own columns.

Built only when some app reads its own columns; each op calls the core library once
(cutover/app_flip.py), and a refusal fails the run with every reason, changing nothing. ``app``
and ``space`` are choices built from the loaded config (launchpad.py).
"""

import dagster as dg
from pydantic import Field

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.cutover.app_flip import cutover_app, rollback_app
from embedding_pipeline.cutover.app_stage import stage
from embedding_pipeline.defs.cutover.jobs import _actor, _run, one_op_job
from embedding_pipeline.defs.cutover.launchpad import choice, cutover_spaces
from embedding_pipeline.defs.resources import PipelineResource


def build(config: PipelineConfig) -> dg.Definitions:
    apps = sorted(n for n, a in config.apps.items() if a.cutover == "column")
    if not apps:
        return dg.Definitions()
    names = ", ".join(apps)
    App = choice("app", apps)
    Space = choice("space", cutover_spaces(config, [s for a in apps for s in config.app(a).sources]))

    class AppStageConfig(dg.Config):
        app: App = Field(description="app whose columns get the space beside them (apps.<app>)")
        space: Space = Field(description="space to stage (its per-model tables must be built)")

    class AppCutoverConfig(dg.Config):
        app: App = Field(description="app whose own columns flip, all its sources in one transaction")
        space: Space = Field(description="space the columns will hold (staged first by app_stage)")
        force: bool = Field(False, description="skip the gates (backup, coverage, eval, validator); recorded in the "
                                               "audit")
        drained: bool = Field(False, description="the app is stopped: needed for a same-dimension flip while its "
                                                 "sessions are connected")

    class AppRollbackConfig(dg.Config):
        app: App = Field(description="app whose columns flip back to the previous space")
        drained: bool = Field(False, description="the app is stopped (same-dimension rule)")

    @dg.op(out=dg.Out(dg.Nothing), description="Add, fill and index a space's column beside an app's own column.")
    def app_stage_op(context: dg.OpExecutionContext, config: AppStageConfig, pipeline: PipelineResource):
        def run():
            reports = stage(pipeline.database(), pipeline.config(), config.app.value, config.space.value,
                            provider_for=pipeline.provider)
            return {r.source: r.to_json() for r in reports}
        return _run(context, run)

    @dg.op(out=dg.Out(dg.Nothing), description="Flip an app's own columns to a space (one transaction, all sources).")
    def app_cutover_op(context: dg.OpExecutionContext, config: AppCutoverConfig, pipeline: PipelineResource):
        return _run(context, cutover_app, pipeline.database(), pipeline.config(), config.app.value, config.space.value,
                    force=config.force, drained=config.drained, actor=_actor(context), provider_for=pipeline.provider)

    @dg.op(out=dg.Out(dg.Nothing), description="Flip an app's own columns back to their previous space.")
    def app_rollback_op(context: dg.OpExecutionContext, config: AppRollbackConfig, pipeline: PipelineResource):
        return _run(context, rollback_app, pipeline.database(), pipeline.config(), config.app.value,
                    drained=config.drained, actor=_actor(context), provider_for=pipeline.provider)

    stage_job = one_op_job("app_stage", app_stage_op, f"Stage a space beside the own columns of an app ({names}). "
                           "Run config: ops.app_stage_op.config {app, space}.")
    cutover_job = one_op_job("app_cutover", app_cutover_op, f"Flip an app's ({names}) own columns to a staged space, "
                             "all its sources in one transaction. Run config: ops.app_cutover_op.config "
                             "{app, space, force, drained}.")
    rollback_job = one_op_job("app_rollback", app_rollback_op, f"Flip an app's ({names}) own columns back. Run "
                              "config: ops.app_rollback_op.config {app, drained}.")

    return dg.Definitions(jobs=[stage_job, cutover_job, rollback_job])
