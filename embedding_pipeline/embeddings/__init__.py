"""Writing vectors: source setup, the re-embed engine (which records each HNSW build it makes in
``index_builds``), change capture and coverage counts."""
