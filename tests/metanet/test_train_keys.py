"""Stage 1 (training.train_keys), recipe files, stage 2's frozen keys, evaluation of every class at once."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import MetaNet, MetaNetConfig
from model.checkpoint import read_metadata, save_checkpoint
from training import evaluate, train, train_keys
from training.episodes import ClassPool, all_classes_episode


@pytest.fixture()
def start(tmp_path) -> str:
    torch.manual_seed(0)
    path = tmp_path / "start.safetensors"
    save_checkpoint(MetaNet(MetaNetConfig(signed_keys=True, max_task_examples=5)), path, {"split": "vinyals"})
    return str(path)


def keys_argv(tmp_path, start: str, steps: int) -> list[str]:
    return [
        "--split", "vinyals", "--init-from", start, "--way", "8", "--queries", "2", "--steps", str(steps),
        "--val-every", "2", "--val-tasks", "4", "--no-compile",
        "--out", str(tmp_path / "keys" / "k.safetensors"),
    ]  # fmt: skip


def test_keys_stage_trains_u_and_the_scale_only_and_writes_a_metanet_checkpoint(
    tmp_path, start, evaluation_characters
):
    train_keys.main(keys_argv(tmp_path, start, 2))
    before, after = load_file(start), load_file(tmp_path / "keys" / "k.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("rep.", "log_attention_scale")) for name in changed)
    assert any(name.startswith("rep.") for name in changed)
    metadata = read_metadata(tmp_path / "keys" / "k.safetensors")
    assert metadata["stage"] == "keys" and metadata["command"].startswith("python -m training.train_keys")
    assert {"images", "images_per_s", "wall_time_s", "hardware", "initialized_from"} <= set(metadata)
    assert metadata["images"] == 2 * 8 * (1 + 2)
    rows = list(csv.DictReader((tmp_path / "keys" / "metrics.csv").open()))
    assert [row["episode"] for row in rows] == ["2"] and 0 <= float(rows[0]["val_accuracy"]) <= 100
    assert (tmp_path / "keys" / "learning_curve.png").stat().st_size > 1000


def test_keys_stage_resumes_where_it_stopped(tmp_path, start, evaluation_characters):
    train_keys.main(keys_argv(tmp_path, start, 2))
    train_keys.main([*keys_argv(tmp_path, start, 4), "--resume"])
    rows = list(csv.DictReader((tmp_path / "keys" / "metrics.csv").open()))
    assert [row["episode"] for row in rows] == ["2", "4"]


def test_a_recipe_file_gives_defaults_and_the_command_line_wins(tmp_path, start, evaluation_characters):
    recipe = tmp_path / "keys.toml"
    recipe.write_text('split = "vinyals"\nway = 8\nqueries = 2\nsteps = 2\nval-tasks = 4\nlr = 0.5\n')
    args = train_keys.parse_args(["--recipe", str(recipe), "--lr", "0.25", "--out", "x.safetensors"])
    assert (args.way, args.queries, args.steps, args.lr) == (8, 2, 2, 0.25)
    recipe.write_text("wya = 8\n")
    with pytest.raises(SystemExit):  # a misspelt key is an error, not silently ignored
        train_keys.parse_args(["--recipe", str(recipe), "--out", "x.safetensors"])


def test_shipped_recipes_name_only_known_flags():
    from testkit import REPO

    recipes = sorted((REPO / "configs").glob("*.toml"))
    assert recipes
    for recipe in recipes:
        module = train_keys if recipe.name.startswith("keys-") else train
        args = module.parse_args(["--recipe", str(recipe), "--out", "x.safetensors"])
        assert args.recipe == recipe


def test_frozen_keys_leave_u_and_the_scale_as_they_were(tmp_path, start, evaluation_characters):
    out = tmp_path / "stage2.safetensors"
    argv = ["--split", "vinyals", "--way", "3", "--queries", "2", "--episodes", "2", "--val-every", "1"]
    argv += [
        "--val-tasks",
        "2",
        "--device",
        "cpu",
        "--compile",
        "none",
        "--batch",
        "1",
        "--task-examples",
        "5",
    ]
    argv += ["--signed-keys", "--attention-loss", "0.5", "--freeze-keys", "--init-from", start]
    argv += ["--out", str(out), "--run-dir", str(tmp_path / "run")]
    train.main(argv)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    before = load_file(start)
    changed = {name for name, value in before.items() if not torch.equal(value, state[name])}
    assert changed and not any(name.startswith(("rep.", "log_attention_scale")) for name in changed)
    assert any(name.startswith("base.") for name in changed) and any(
        name.startswith("d_rep") for name in changed
    )


def test_every_class_at_once_holds_one_drawing_each_and_queries_by_other_drawers(evaluation_characters):
    pool = ClassPool(evaluation_characters.images[:30], [(i, 0) for i in range(30)])
    episode = all_classes_episode(pool, 2, np.random.default_rng(0))
    assert episode.support.shape == (30, 1, 28, 28) and episode.query.shape == (60, 1, 28, 28)
    assert episode.query_labels.tolist() == [c for c in range(30) for _ in range(2)]
    for c in range(30):  # no query is the support drawing itself
        for q in episode.query[2 * c : 2 * c + 2]:
            assert not torch.equal(q, episode.support[c])


def test_evaluate_all_classes_reports_top1_and_top5(tmp_path, capsys, start, evaluation_characters):
    argv = [
        "--checkpoint",
        start,
        "--split",
        "standard",
        "--way",
        "all",
        "--tasks",
        "1",
        "--json",
        "--device",
        "cpu",
    ]
    evaluate.main(argv)
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == 659 and result["queries"] == 2 * 659 and result["way"] == "all"
    assert 0 <= result["top1"] <= result["top5"] <= 100
    assert 0 <= result["attention_top1"] <= result["attention_top5"] <= 100
