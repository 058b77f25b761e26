"""Filling the per-model tables: preparation, the re-embed engine, change capture, coverage.

``setup`` (register spaces, create tables and bindings), ``reembed`` (stream a source into one
space, resumably), ``capture`` (trigger or cursor change capture and its consumer), ``coverage``
(how complete and pure one space is on one source). A new source kind starts in ``spaces.source``
and ``setup``; a new write strategy goes here.

May import: ``config``, ``errors``, ``db``, ``spaces``, ``providers``, ``read_path``.
"""
