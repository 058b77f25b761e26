"""The Dagster layer: one folder per domain (backup, embeddings, evaluation, drift, cutover).

Each domain module exposes ``build(config) -> dg.Definitions``; ``definitions.py`` merges them.
Assets are thin: they read resources and call the core library.
"""
