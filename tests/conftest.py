"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.data.synthetic import generate_demo_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A synthetic hand dataset folder (6 train, 2 valid images, 37 landmarks), written once per test module."""
    return generate_demo_dataset(tmp_path_factory.mktemp("data") / "demo_hand", kind="hand", num_train=6, num_valid=2, seed=3)
