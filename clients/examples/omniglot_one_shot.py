"""Teach a MetaNet server Omniglot characters from one drawing each, classify other drawings.

Each trial draws `--way` characters of one alphabet (Lake et al.'s 20-way within-alphabet
protocol), teaches a fresh task one drawing of each (`--shots`), classifies another person's
drawing of each with "none of these" off (every query is of a taught character, as in the
protocol), prints the accuracy and deletes the task. Needs only the SDK:

    python -m server --port 8000 --data-dir data &           # in another terminal
    python clients/examples/omniglot_one_shot.py --way 20 --trials 20
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import statistics
import zipfile
from collections import defaultdict
from pathlib import Path

from metanet_client import Client, NotFoundError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared/data/omniglot/images_evaluation.zip"


def load_characters(path: Path) -> dict[str, dict[str, list[str]]]:
    """alphabet -> character -> sorted PNG names, from the official Omniglot zip layout."""
    alphabets: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) == 4 and parts[3].endswith(".png"):
                alphabets[parts[1]][parts[2]].append(name)
    return {a: {c: sorted(names) for c, names in chars.items()} for a, chars in alphabets.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="server URL (default: $METANET_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default: $METANET_API_KEY)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Omniglot zip (default: %(default)s)")
    parser.add_argument("--way", type=int, default=20, help="characters per trial (default: 20)")
    parser.add_argument("--shots", type=int, default=1, help="drawings taught per character (default: 1)")
    parser.add_argument("--trials", type=int, default=10, help="number of trials (default: 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    alphabets = load_characters(args.data)
    eligible = sorted(a for a, chars in alphabets.items() if len(chars) >= args.way)
    if not eligible:
        parser.error(f"no alphabet has {args.way} characters")
    accuracies = []
    with Client(args.url, args.api_key) as client, zipfile.ZipFile(args.data) as archive:
        for trial in range(args.trials):
            alphabet = rng.choice(eligible)
            drawings = {c: alphabets[alphabet][c] for c in rng.sample(sorted(alphabets[alphabet]), args.way)}
            *taught, asked = rng.sample(range(min(map(len, drawings.values()))), args.shots + 1)
            task = client.task(f"omniglot-example-{args.seed}-{trial}")
            with contextlib.suppress(NotFoundError):
                task.delete()  # left over from an interrupted run
            task.add_examples((c, archive.read(drawn[d])) for c, drawn in drawings.items() for d in taught)
            queries = [archive.read(drawn[asked]) for drawn in drawings.values()]
            predicted = task.classify(queries, reject=False).labels  # closed set: always the nearest label
            task.delete()
            accuracies.append(statistics.fmean(p == c for p, c in zip(predicted, drawings, strict=True)))
            print(f"trial {trial + 1:3d}/{args.trials}  {alphabet:<35s} accuracy {accuracies[-1]:6.1%}")

    mean = statistics.fmean(accuracies)
    ci = 1.96 * statistics.stdev(accuracies) / math.sqrt(len(accuracies)) if len(accuracies) > 1 else 0.0
    print(f"{args.way}-way {args.shots}-shot accuracy, {args.trials} trials: {mean:.2%} ± {ci:.2%} (95% CI)")


if __name__ == "__main__":
    main()
