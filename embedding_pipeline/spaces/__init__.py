"""Vector spaces: what a space is, where its vectors live, and whether it is still the same model.

``model`` (``Space``, ``SpaceTable``, ``Binding``: the vocabulary every domain speaks; it imports
nothing of ours), ``source`` (a configured source table checked against the catalog), ``registry``
(identity and canary vectors), ``bindings`` (per-source tables, the active one, HNSW builds),
``validator`` (dimensions, identity, canaries), ``canaries``, ``queries`` (the package's SQL but
the space's own table, index and row statements, which ``model`` writes).

May import: ``config``, ``errors``, ``db``.
"""
