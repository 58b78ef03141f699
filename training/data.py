"""Omniglot: read the official zip layout once, cache it as arrays, and build the splits.

Source: ``images_background.zip`` / ``images_evaluation.zip`` (or their extracted folders) laid
out as ``images_background/<Alphabet>/characterNN/NNNN_MM.png``. Point ``--data`` at a folder
holding them; by default ``../shared/data/omniglot``. Users with internet can run
``python -m training.data --download DIR`` to fetch the official archives through torchvision.

Decoded images (28x28 uint8, bright strokes, see model/preprocess.py) are cached in
``.cache/omniglot/<archive>.npz``.
"""

from __future__ import annotations

import argparse
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from model.preprocess import preprocess_image

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "omniglot"
CACHE_DIR = REPO_ROOT / ".cache" / "omniglot"
ARCHIVES = ("images_background", "images_evaluation")
DRAWINGS_PER_CHARACTER = 20


@dataclass
class Characters:
    """All drawings of a set of characters: images [C, 20, 28, 28] uint8; names ["Alphabet/characterNN"]."""

    images: np.ndarray
    names: list[str]

    def alphabet(self, index: int) -> str:
        return self.names[index].split("/")[0]


def _iter_pngs(source: Path, archive: str):
    """Yield (relative path 'Alphabet/characterNN/file.png', bytes) from a zip or a folder."""
    zipped, folder = source / f"{archive}.zip", source / archive
    if folder.is_dir():
        for path in sorted(folder.glob("*/*/*.png")):
            yield str(path.relative_to(folder)), path.read_bytes()
    elif zipped.is_file():
        with zipfile.ZipFile(zipped) as archive_file:
            for name in sorted(n for n in archive_file.namelist() if n.endswith(".png")):
                yield name.split("/", 1)[1], archive_file.read(name)
    else:
        raise FileNotFoundError(
            f"neither {zipped} nor {folder} exists; see training/data.py for how to get Omniglot"
        )


def decode_archive(source: Path, archive: str) -> Characters:
    """Decode every drawing of one archive with the model's preprocessing."""
    drawings: dict[str, list[np.ndarray]] = {}
    for relative, data in tqdm(list(_iter_pngs(source, archive)), desc=f"decoding {archive}", unit="img"):
        character = "/".join(relative.split("/")[:2])
        drawings.setdefault(character, []).append(preprocess_image(Image.open(io.BytesIO(data))))
    names = sorted(drawings)
    if any(len(drawings[n]) != DRAWINGS_PER_CHARACTER for n in names):
        raise ValueError(f"{archive}: expected {DRAWINGS_PER_CHARACTER} drawings per character")
    return Characters(np.stack([np.stack(drawings[n]) for n in names]), names)


def load_archive(archive: str, source: Path = DEFAULT_DATA, cache_dir: Path = CACHE_DIR) -> Characters:
    """Load one archive, decoding it on first use into ``cache_dir``."""
    cached = cache_dir / f"{archive}.npz"
    if not cached.exists():
        characters = decode_archive(Path(source), archive)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")  # concurrent first uses (torchrun ranks)
        np.savez_compressed(tmp, images=characters.images, names=np.array(characters.names))
        tmp.replace(cached)
    with np.load(cached) as data:
        return Characters(data["images"], [str(n) for n in data["names"]])


def download(root: Path) -> Path:
    """Fetch the official Omniglot archives with torchvision (needs internet); returns the folder."""
    from torchvision.datasets import Omniglot

    for background in (True, False):
        Omniglot(str(root), background=background, download=True)
    return root / "omniglot-py"


def main() -> None:
    parser = argparse.ArgumentParser(description="Decode Omniglot into the array cache.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the Omniglot zips")
    parser.add_argument("--download", type=Path, help="download the official archives into this folder first")
    args = parser.parse_args()
    source = download(args.download) if args.download else args.data
    for archive in ARCHIVES:
        characters = load_archive(archive, source)
        print(f"{archive}: {len(characters.names)} characters, {characters.images.shape}")


if __name__ == "__main__":
    main()
