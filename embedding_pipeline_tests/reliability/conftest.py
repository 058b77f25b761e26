"""Fixtures of the reliability tests (kill -9, bad input, concurrency, hostile config, provider faults,
secrets); every test here is marked ``reliability`` (``-m "not reliability"`` skips them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedding_pipeline.config import load_config
from embedding_pipeline_tests.support.configs import TEST_CONFIG

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="module")
def packaged_config():
    """The packaged config read without the environment, for module-scoped fixtures (``config`` is per test)."""
    return load_config(TEST_CONFIG, env={})
