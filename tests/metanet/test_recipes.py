"""Each shipped checkpoint's recorded command can be re-run from a recipe file (configs/*.toml).

docs/RESULTS.md, "Re-running the shipped checkpoints", names for each checkpoint the recipe command
that re-runs its last stage. Here both that command and the one the checkpoint's JSON recorded are
parsed by the training command's own parser: they must give the same flags, the docs' command may
add to its recipe only flags of the run itself, and the flags must agree with what the JSON says
the run was (its ``recipe``, ``split`` and ``seed``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex

import pytest

from testkit import REPO
from training import train, train_keys
from training.devices import default_compile

PARSERS = {"training.train": train.parse_args, "training.train_keys": train_keys.parse_args}
# What a run chooses for itself rather than what it trains: where the data lies, its time budget,
# the weights it starts from, where it writes (and what it keeps there), its threads, resuming.
RUN_FLAGS = {"data", "max_minutes", "init_from", "out", "run_dir", "snapshots", "threads", "resume"}
ROW = re.compile(
    r"^\| `(?P<checkpoint>[\w-]+)`[^|]*\| `(?P<stage>[\w.]+)` \| `(?P<command>python -m [^`]+)` \|$"
)


def table_rows() -> list[dict[str, str]]:
    text = (REPO / "docs" / "RESULTS.md").read_text()
    section = text.split("## Re-running the shipped checkpoints", 1)[1].split("\n## ", 1)[0]
    return [m.groupdict() for line in section.splitlines() if (m := ROW.match(line))]


def recorded(checkpoint: str, stage: str) -> dict:
    """The metadata of one stage of a shipped checkpoint: its own, or an ``initialized_from`` one."""
    metadata = json.loads((REPO / "checkpoints" / f"{checkpoint}.json").read_text())
    for key in stage.split(".")[:-1]:
        metadata = metadata[key]
    return metadata


def parse(command: str) -> tuple[str, argparse.Namespace]:
    python, dash_m, module, *argv = shlex.split(command)
    assert (python, dash_m) == ("python", "-m") and module in PARSERS, command
    return module, PARSERS[module](argv)


def flags(args: argparse.Namespace) -> dict:
    return {key: value for key, value in vars(args).items() if key != "recipe"}


def test_every_shipped_checkpoint_has_a_recipe_command():
    shipped = {path.stem for path in (REPO / "checkpoints").glob("*.json")}
    assert shipped
    assert shipped <= {row["checkpoint"] for row in table_rows() if row["stage"] == "command"}


@pytest.mark.parametrize("row", table_rows(), ids=lambda row: f"{row['checkpoint']}:{row['stage']}")
def test_the_recipe_command_gives_the_recorded_commands_flags(row, monkeypatch):
    monkeypatch.chdir(REPO)  # recipe and checkpoint paths are relative to the repository
    metadata = recorded(row["checkpoint"], row["stage"])
    module, args = parse(row["command"])
    recorded_module, recorded_args = parse(metadata["command"])
    assert module == recorded_module
    assert args.recipe is not None and args.recipe.is_file()

    assert flags(args) == flags(recorded_args)

    recipe_argv = shlex.split(row["command"])[3:]
    given = {arg[2:].replace("-", "_") for arg in recipe_argv if arg.startswith("--")} - {"recipe"}
    assert given <= RUN_FLAGS, f"flags of the recipe itself on the command line: {given - RUN_FLAGS}"

    resolved = flags(args) | {"compile": args.compile or default_compile(getattr(args, "device", "cpu"))}
    if module == "training.train_keys":
        resolved["compile"] = args.compile  # a switch of its own there (torch.compile the step)
    said = {"split": metadata["split"], "seed": metadata["seed"]} | {
        key: value
        for key, value in metadata["recipe"].items()
        if resolved.get(key) not in (None, "auto")  # "auto": the model's choice at run time
    }
    assert said and {key: resolved[key] for key in said} == said
