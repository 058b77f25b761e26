"""What the Launchpad offers for the cutover jobs, and what their refused runs tell the person who launched them.

Choices: the ``source``, ``space`` and ``app`` fields are config enums built from the loaded config,
so the Launchpad offers them as a list and Dagster rejects an unknown value before the run starts;
the enum's type name lists the allowed values, so Dagster's error names them.

Hints: the core's refusal reasons end with the CLI command that fixes them. A refused run keeps
those reasons as they are (metadata ``reasons``) and puts beside each one what to do in the UI
(metadata ``ui_hints``): the asset and partition to materialize, or the job and config to launch.
The run's failure description is the reasons with each command replaced by its hint.
"""

import enum
import re
from collections.abc import Iterable

import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.defs.backup.assets import BACKUP_KEY
from embedding_pipeline.defs.embeddings.assets import (
    index_key,
    partitions_of,
    reembed_key,
)
from embedding_pipeline.defs.evaluation.assets import eval_asset_key
from embedding_pipeline.errors import RefusedError


def choice(field: str, values: Iterable[str]) -> type[enum.Enum]:
    """A config enum of ``values`` (names like ``e5-small`` are valid values): the member's value is the name."""
    names = sorted(set(values))
    return enum.Enum(f"{field} ({' | '.join(names)})", {n: n for n in names})


def cutover_spaces(config: PipelineConfig, sources: Iterable[str]) -> list[str]:
    """Every space some of ``sources`` can be switched to: its legacy space and its configured spaces."""
    return sorted({s for src in sources
                   for s in [config.source(src).legacy_space, *config.spaces_for(src)] if s})


# `embedding-pipeline <command> <args>` as the core's refusal texts write it (after a first command the
# program's name may be left out: "`embedding-pipeline cutover --app A` / `rollback --app A`"), with the
# words that lead into it.
_COMMAND = re.compile(r"(?:(?:run|use) (?:the eval asset / )?)?`(?:embedding-pipeline )?"
                      r"(?P<command>reembed|eval|backup|app-stage|cutover|rollback)(?P<args>[^`]*)`")
_FLAG = re.compile(r"--(force|drained)\b")


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"--(\w+) (\S+)", text))


def _materialize(key: dg.AssetKey, partition: str | None) -> str:
    return f"materialize asset `{key.to_user_string()}`" + (f", partition `{partition}`" if partition else "")


def _reembed(space: str, source: str | None, config: PipelineConfig | None) -> str:
    """A sharded source has no partition of its own name on the re-embed asset: name its shard
    partitions, then the index asset that builds the source's index once every shard is in."""
    keys = partitions_of(config, source) if config is not None and source in config.sources else []
    if len(keys) <= 1:
        return _materialize(reembed_key(space), source)
    shards = ", ".join(f"`{k}`" for k in keys) if len(keys) <= 4 else f"`{keys[0]}` … `{keys[-1]}` (all {len(keys)})"
    return (f"materialize asset `{reembed_key(space).to_user_string()}`, partitions {shards}, then asset "
            f"`{index_key(space).to_user_string()}`, partition `{source}`")


def _launch(job: str, **config: str) -> str:
    fields = ", ".join(f"{k}: {v}" for k, v in config.items())
    return f"launch job `{job}`" + (f" with {fields}" if fields else "")


def ui_action(command: str, args: dict[str, str], config: PipelineConfig | None = None) -> str | None:
    """The UI's way to do what ``embedding-pipeline <command> <args>`` does; None when there is none.
    With ``config``, a sharded source's re-embed names its shard partitions."""
    source, space, app = args.get("source"), args.get("space"), args.get("app")
    if command == "reembed" and space:
        return _reembed(space, source, config)
    if command == "eval" and space:
        return _materialize(eval_asset_key(space), source)
    if command == "backup":
        return _materialize(BACKUP_KEY, source)
    if command == "app-stage" and app:
        return _launch("app_stage", app=app, space=space or "<space>")
    if command == "cutover" and app:
        return _launch("app_cutover", app=app, space=space or "<space>")
    if command == "rollback":
        return _launch("app_rollback", app=app) if app else _launch("rollback", source=source or "<source>")
    return None


def _action(m: re.Match, config: PipelineConfig | None = None) -> str | None:
    return ui_action(m["command"], _args(m["args"]), config)


def _flag(m: re.Match) -> str:
    return f"`{m[1]}: true` in the run config"


def ui_text(text: str, config: PipelineConfig | None = None) -> str:
    """``text`` with each CLI command it names replaced by the UI action, and flags by config fields."""
    return _FLAG.sub(_flag, _COMMAND.sub(lambda m: _action(m, config) or m[0], text))


def hints(reasons: list[str], config: PipelineConfig | None = None) -> list[str]:
    """Beside each reason: the UI actions and config fields it asks for, or "" when it names none."""
    return ["; ".join([a for m in _COMMAND.finditer(r) if (a := _action(m, config))]
                      + [f"set {_flag(m)}" for m in _FLAG.finditer(r)]) for r in reasons]


def refusal(e: RefusedError, config: PipelineConfig | None = None) -> dg.Failure:
    """The run's failure for a refusal: what to click instead of what to type, every reason kept."""
    title, _, _ = str(e).partition(":\n  - ")
    lines = [ui_text(title, config)] if e.reasons == [title] else [title.replace("--force", "force")] + [
        f"- {ui_text(r, config)}" for r in e.reasons]
    return dg.Failure(description="\n".join(lines), allow_retries=False, metadata={
        "reasons": dg.MetadataValue.json(e.reasons), "ui_hints": dg.MetadataValue.json(hints(e.reasons, config))})
