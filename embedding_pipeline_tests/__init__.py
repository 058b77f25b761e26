"""Tests in layers: fixtures in ``conftest.py`` (plus ``cutover/``, ``drift/`` and ``reliability/`` with their
own conftests), plain helpers in ``support/``, the definitions snapshot in ``snapshots/``."""
