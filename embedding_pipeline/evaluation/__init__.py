"""Retrieval evaluation: IR metrics, ranking agreement, BEIR loading and stored eval sets.

Nothing here knows about Dagster; the shadow-evaluation assets build on these pieces.
"""
