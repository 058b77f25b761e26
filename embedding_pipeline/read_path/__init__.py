"""The read path: what applications query, always exactly one space.

``install`` (the per-source view and search function over the active binding), ``ann`` (a k-NN
query against one named space), ``search`` (search in the active space in one snapshot), ``lazy``
(fused search over old and new space while the new one fills), ``queries`` (all of their SQL).

May import: ``config``, ``errors``, ``db``, ``spaces``, ``providers``.
"""
