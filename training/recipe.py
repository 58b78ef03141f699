"""Recipes as files: a TOML table of flag values that a command's parser takes as its defaults.

    python -m training.train_keys --recipe configs/keys-standard.toml --max-minutes 5

Keys are the flags' names with dashes or underscores (``max-minutes`` or ``max_minutes``); a flag
given on the command line wins over the recipe. An unknown key is an error, so a recipe cannot
silently drift from the command that reads it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any


def recorded_command(module: str, argv: list[str] | None) -> str:
    """The command line a checkpoint records as its ``command`` (``argv`` None: this process's),
    in the form ``tests/metanet/test_recipes.py`` parses back."""
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)


def read_recipe(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return {key.replace("-", "_"): value for key, value in tomllib.load(f).items()}


def parse_with_recipe(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the defaults of ``--recipe FILE`` (added here) applied first."""
    parser.add_argument("--recipe", type=Path, default=None, help="TOML file of flag values (configs/)")
    first, _ = parser.parse_known_args(argv)
    if first.recipe is not None:
        recipe = read_recipe(first.recipe)
        known = {action.dest for action in parser._actions}
        if unknown := sorted(set(recipe) - known):
            parser.error(f"{first.recipe}: unknown keys {unknown}")
        for action in parser._actions:  # a recipe may fill in a required flag
            if action.dest in recipe:
                action.required = False
        parser.set_defaults(**{k: Path(v) if _is_path(parser, k) else v for k, v in recipe.items()})
    return parser.parse_args(argv)


def _is_path(parser: argparse.ArgumentParser, dest: str) -> bool:
    return any(action.dest == dest and action.type is Path for action in parser._actions)
