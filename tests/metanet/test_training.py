"""Training, checkpoints and evaluation on real Omniglot drawings."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import MetaNet
from model.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from training import evaluate, train
from training.episodes import ClassPool, EpisodeSampler


@pytest.fixture(scope="module")
def pool(evaluation_characters) -> ClassPool:
    return ClassPool(evaluation_characters.images[:60], [(i, 0) for i in range(60)])


def test_episode_sampler_shapes_labels_and_seed(pool: ClassPool):
    first = EpisodeSampler(pool, way=5, shot=2, queries=3, seed=7).sample()
    again = EpisodeSampler(pool, way=5, shot=2, queries=3, seed=7).sample()
    assert first.support.shape == (10, 1, 28, 28) and first.query.shape == (15, 1, 28, 28)
    assert first.support_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert first.label_codes.tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(first.query, again.query)
    codes = EpisodeSampler(pool, way=5, shot=1, queries=1, seed=0, code_rows=10_000).sample().label_codes
    assert len(set(codes.tolist())) == 5 and codes.max() < 10_000


def test_a_few_steps_lower_the_loss(pool: ClassPool):
    torch.manual_seed(0)
    model = MetaNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    episode = EpisodeSampler(pool, way=5, shot=1, queries=4, seed=0).sample()
    losses = []
    for _ in range(25):
        logits = model(episode.support, episode.support_labels, episode.query, episode.label_codes)
        loss = F.cross_entropy(logits, episode.query_labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MetaNet()
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, {"split": "vinyals", "episodes": 3})
    loaded, metadata = load_checkpoint(path)
    assert metadata["split"] == "vinyals" and metadata["config"] == model.config.to_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    torch.testing.assert_close(loaded.base_codes, model.base_codes)  # the codebook is rebuilt, not stored
    path.with_suffix(".json").unlink()
    assert read_metadata(path)["episodes"] == 3  # the safetensors header holds it too


def test_evaluation_is_deterministic_under_a_seed(pool: ClassPool):
    torch.manual_seed(0)
    model = MetaNet()
    first = evaluate.task_accuracies(model, pool, way=5, shot=1, queries=2, tasks=4, seed=3)
    second = evaluate.task_accuracies(model, pool, way=5, shot=1, queries=2, tasks=4, seed=3)
    np.testing.assert_array_equal(first, second)
    summary = evaluate.summarize(np.array([1.0, 0.5, 0.75, 0.75]))
    assert summary["accuracy"] == 75.0
    assert summary["ci95"] == pytest.approx(100 * 1.96 * np.std([1, 0.5, 0.75, 0.75], ddof=1) / 2)


def test_training_command_writes_checkpoint_metrics_plot_and_resumes(tmp_path, evaluation_characters):
    out, run_dir = tmp_path / "ckpt.safetensors", tmp_path / "run"
    argv = ["--split", "vinyals", "--way", "3", "--queries", "2", "--episodes", "2", "--val-every", "1"]
    argv += ["--val-tasks", "2", "--device", "cpu", "--out", str(out), "--run-dir", str(run_dir)]
    train.main(argv)
    metadata = json.loads(out.with_suffix(".json").read_text())
    assert metadata["split"] == "vinyals" and metadata["command"].startswith("python -m training.train")
    assert {"wall_time_s", "hardware", "episodes", "validation"} <= set(metadata)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [row["episode"] for row in rows] == ["1", "2"]
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    train.main([*argv[:7], "3", *argv[8:], "--resume"])
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [row["episode"] for row in rows] == ["1", "2", "3"]


def test_evaluate_command_prints_one_json_object(tmp_path, capsys, evaluation_characters):
    torch.manual_seed(0)
    path = tmp_path / "model.safetensors"
    save_checkpoint(MetaNet(), path, {})
    argv = ["--checkpoint", str(path), "--split", "standard", "--way", "5", "--shot", "1"]
    evaluate.main([*argv, "--tasks", "3", "--seed", "1", "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"accuracy", "ci95"} and 0 <= result["accuracy"] <= 100
