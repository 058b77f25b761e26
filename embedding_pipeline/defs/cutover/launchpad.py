"""What the Launchpad offers for the cutover jobs.

Choices: the ``source``, ``space`` and ``app`` fields are config enums built from the loaded config,
so the Launchpad offers them as a list and Dagster rejects an unknown value before the run starts;
the enum's type name lists the allowed values, so Dagster's error names them.
"""

import enum
from collections.abc import Iterable

from embedding_pipeline.config import PipelineConfig


def choice(field: str, values: Iterable[str]) -> type[enum.Enum]:
    """A config enum of ``values`` (names like ``e5-small`` are valid values): the member's value is the name."""
    names = sorted(set(values))
    return enum.Enum(f"{field} ({' | '.join(names)})", {n: n for n in names})


def cutover_spaces(config: PipelineConfig, sources: Iterable[str]) -> list[str]:
    """Every space some of ``sources`` can be switched to: its legacy space and its configured spaces."""
    return sorted({s for src in sources
                   for s in [config.source(src).legacy_space, *config.spaces_for(src)] if s})
