from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import SMALL_LIMITS, Engine, start, start_test


@pytest.fixture(scope="session")
def test_engine() -> Iterator[Engine]:
    """The torch-free test engine, shared by tests that leave it healthy."""
    engine = start_test(["--concurrency", "1", *SMALL_LIMITS])
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_engine() -> Iterator[Engine]:
    """The real Diffusers pipeline with the tiny random model, on the CPU."""
    engine = start(["--tiny-model", "--device", "cpu", *SMALL_LIMITS])
    yield engine
    engine.close()
