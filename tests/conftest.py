"""Shared fixtures: real Omniglot drawings decoded through the project's cache."""

from __future__ import annotations

import pytest

from testkit import OMNIGLOT_DIR


@pytest.fixture(scope="session")
def evaluation_characters():
    """images_evaluation as Characters: images [659, 20, 28, 28] uint8."""
    from training.data import load_archive

    if not (OMNIGLOT_DIR / "images_evaluation.zip").exists():
        pytest.skip(f"Omniglot data not found in {OMNIGLOT_DIR} (METANET_TEST_OMNIGLOT)")
    return load_archive("images_evaluation", OMNIGLOT_DIR)
