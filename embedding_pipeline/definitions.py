"""The code location: every domain package under ``defs/`` built from the config, plus the resources.

Dagster's ``load_from_defs_folder`` loads module-level objects; our domains are config-driven
factories (one asset per configured space, partitions from the configured sources), so each
``defs/<domain>`` exposes ``build(config)`` and this module calls them with the one loaded config.
"""

import dagster as dg

from embedding_pipeline.config import load_config
from embedding_pipeline.defs import domains
from embedding_pipeline.defs.resources import build_resources
from embedding_pipeline.defs.startup import validate_on_load


def build_definitions() -> dg.Definitions:
    config = load_config()
    validate_on_load(config)
    return dg.Definitions.merge(*(domain.build(config) for domain in domains()), build_resources())


defs = build_definitions()
