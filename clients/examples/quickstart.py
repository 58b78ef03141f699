"""The quickstart of docs/CLIENT.md: run it from the repository root with a server on port 8000."""

from zipfile import ZipFile

from metanet_client import Client

omniglot = ZipFile("../shared/data/omniglot/images_evaluation.zip")


def drawing(char, drawer):  # one person's drawing (1-20) of a Tibetan character (1-9) from Omniglot
    return omniglot.read(f"images_evaluation/Tibetan/character{char:02d}/{1555 + char}_{drawer:02d}.png")


task = Client("http://127.0.0.1:8000").task("quickstart")
task.add_examples([(f"char{c}", drawing(c, drawer=1)) for c in range(1, 6)])  # one drawing of each
result = task.classify([drawing(c, drawer=13) for c in range(1, 7)])  # another person's; char6 is new
print(result.labels)
print([(p.known, round(p.novelty, 2)) for p in result.predictions])
