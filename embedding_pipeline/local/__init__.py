"""Local development: the end-to-end demo (its Dagster runs are handed in by the CLI; nothing here imports
``defs``), the demo data, `dagster dev` and the helper services."""
