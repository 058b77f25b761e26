"""The migration plan: the live state gathered for one target space, rendered as Markdown.

``model`` (the plan's data classes), ``gather`` (read the state), ``queries`` (its SQL), ``render``
(one section per function). ``render`` imports ``model`` only, so the two never import each other.

May import: ``config``, ``errors``, ``db``, ``spaces``, ``embeddings``, ``evaluation``, ``backup``,
``read_path``.
"""
