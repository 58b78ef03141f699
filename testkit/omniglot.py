"""Omniglot drawings as the PNG files of the dataset, read from its evaluation archive."""

from __future__ import annotations

import os
import zipfile
from collections import defaultdict
from pathlib import Path

from testkit.server import REPO

# Omniglot zips for tests and benchmarks: ../shared/data/omniglot, or METANET_TEST_OMNIGLOT (a device
# machine without ../shared reads a carried copy).
OMNIGLOT_DIR = Path(os.environ.get("METANET_TEST_OMNIGLOT", REPO.parent / "shared/data/omniglot"))


def omniglot(alphabet: str | None, characters: int, drawers: int = 20) -> list[list[bytes]]:
    """PNG files of evaluation characters (of one alphabet, or alphabet by alphabet): [character][drawer]."""
    by_character: dict[str, list[str]] = defaultdict(list)
    prefix = f"images_evaluation/{alphabet}/" if alphabet else "images_evaluation/"
    with zipfile.ZipFile(OMNIGLOT_DIR / "images_evaluation.zip") as archive:
        for name in archive.namelist():
            if name.startswith(prefix) and name.endswith(".png"):
                by_character[name.rsplit("/", 1)[0]].append(name)
        chosen = sorted(by_character)[:characters]
        return [[archive.read(name) for name in sorted(by_character[c])[:drawers]] for c in chosen]
