"""Plain helpers for the tests, no fixtures (those live in the conftests).

``configs`` (the test config file, narrowing it to one source), ``providers`` (a cache of built
providers), ``databases`` (scratch and template databases), ``net`` (free ports, waiting for
HTTP), ``sources`` (small source tables), ``cutover_env`` (the cutover tests' starting state),
``tiny_labeled`` (a labeled eval set), ``fault_proxy``, ``dagster_ui`` and ``reliability_report``.
"""
