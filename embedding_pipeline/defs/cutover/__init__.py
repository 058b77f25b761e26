"""Cutover, rollback and delayed deletion as Dagster jobs; ``jobs.build(config)`` returns them."""
