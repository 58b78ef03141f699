"""Teach a MetaNet server the ten digits from a few MNIST images each (numpy arrays), classify others.

The default model learned from Omniglot characters only: digits are new concepts to it.

    python clients/examples/mnist_digits.py --shots 5 --queries 500
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
from metanet_client import Client, NotFoundError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared/data/mnist/mnist_train_10k.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="server URL (default: $METANET_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default: $METANET_API_KEY)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST npz (default: %(default)s)")
    parser.add_argument("--shots", type=int, default=1, help="images taught per digit (default: 1)")
    parser.add_argument("--queries", type=int, default=500, help="images classified (default: 500)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = np.load(args.data)
    images, labels = data["images"], data["labels"]
    order = np.random.default_rng(args.seed).permutation(len(labels))
    support = [i for digit in range(10) for i in order[labels[order] == digit][: args.shots]]
    taught = set(support)
    queries = [i for i in order if i not in taught][: args.queries]

    with Client(args.url, args.api_key) as client:
        task = client.task(f"mnist-example-{args.seed}")
        with contextlib.suppress(NotFoundError):
            task.delete()  # left over from an interrupted run
        task.add_examples((str(labels[i]), images[i]) for i in support)
        predicted = task.classify([images[i] for i in queries]).labels
        task.delete()
    accuracy = np.mean([p == str(labels[i]) for p, i in zip(predicted, queries, strict=True)])
    print(f"10-way {args.shots}-shot accuracy on {len(queries)} MNIST digits: {accuracy:.1%}")


if __name__ == "__main__":
    main()
