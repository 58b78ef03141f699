"""Training, checkpoints and evaluation on real Omniglot drawings."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from model import MetaNet, MetaNetConfig
from model.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from testkit import REPO
from training import average, evaluate, snapshots, train
from training.data import load_archive
from training.episodes import (
    FIRST_VALIDATION_ALPHABETS,
    STANDARD_VALIDATION_ALPHABETS,
    ClassPool,
    DeviceEpisodeSampler,
    EpisodeSampler,
    load_split,
    validation_alphabets,
)


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
    np.testing.assert_array_equal(first.full, second.full)
    np.testing.assert_array_equal(first.attention, second.attention)
    summary = evaluate.summarize(np.array([1.0, 0.5, 0.75, 0.75]))
    assert summary["accuracy"] == 75.0
    assert summary["ci95"] == pytest.approx(100 * 1.96 * np.std([1, 0.5, 0.75, 0.75], ddof=1) / 2)


def test_batched_evaluation_gives_the_numbers_of_a_task_by_task_loop(pool: ClassPool):
    torch.manual_seed(0)
    model = MetaNet(MetaNetConfig(max_task_examples=5, signed_keys=True))
    for head in (model.m_conv.net[-1], model.m_fc.net[-1], model.d_rep.head):
        torch.nn.init.normal_(head.weight, std=0.02)
    sampler = EpisodeSampler(pool, way=5, shot=1, queries=3, seed=5)
    loop = []
    with torch.no_grad():
        for _ in range(6):  # the evaluation loop as it was: one task per forward pass
            episode = sampler.sample()
            logits = model(episode.support, episode.support_labels, episode.query, episode.label_codes)
            loop.append((logits.argmax(-1) == episode.query_labels).float().mean().item())
    batched = evaluate.task_accuracies(model, pool, way=5, shot=1, queries=3, tasks=6, seed=5, batch=4)
    np.testing.assert_allclose(batched.full, loop)


def test_attention_only_is_the_label_of_the_largest_attention(pool: ClassPool):
    torch.manual_seed(0)
    model = MetaNet()
    episode = EpisodeSampler(pool, way=4, shot=1, queries=2, seed=1).sample()
    logits, votes = model.forward_with_attention(
        episode.support, episode.support_labels, episode.query, episode.label_codes
    )
    assert logits.shape == votes.shape == (8, 4)
    torch.testing.assert_close(votes.sum(-1), torch.ones(8))
    memory = model.build_memory(episode.support, episode.support_labels, episode.label_codes)
    keys = model.embed(episode.query, memory.rep_task_weights)
    nearest = (keys @ memory.keys.T).argmax(-1)  # one shot: the nearest key's label wins
    assert votes.argmax(-1).tolist() == episode.support_labels[nearest].tolist()


def test_device_sampler_draws_meta_batches_and_within_alphabet_episodes():
    groups = np.repeat(np.arange(6), 10)  # 6 "alphabets" of 10 characters
    images = np.random.default_rng(0).integers(0, 255, size=(60, 20, 28, 28), dtype=np.uint8)
    pool = ClassPool(images, [(i, i % 4) for i in range(60)], groups=groups)
    sampler = DeviceEpisodeSampler(pool, 5, 1, 3, batch=64, device="cpu", seed=0, code_rows=1000)
    episode = sampler.sample()
    assert episode.support.shape == (64, 5, 1, 28, 28) and episode.query.shape == (64, 15, 1, 28, 28)
    assert episode.query_labels[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert all(len(set(codes)) == 5 for codes in episode.label_codes.tolist())
    # the support image of label 0 is drawing d of a pool class, rotated by its quarter turns
    flat = episode.support[0, 0, 0].mul(255).round().to(torch.uint8).numpy()
    candidates = [np.rot90(images[c, d], c % 4) for c in range(60) for d in range(20)]
    assert any(np.array_equal(flat, c) for c in candidates)
    within = DeviceEpisodeSampler(pool, 5, 1, 1, 200, "cpu", 0, 1000, within_alphabet=1.0)
    assert all(len(set(groups[c].tolist())) == 1 for c in within._classes())
    mixed = DeviceEpisodeSampler(pool, 5, 1, 1, 400, "cpu", 0, 1000, within_alphabet=0.5)
    one_group = np.mean([len(set(groups[c].tolist())) == 1 for c in mixed._classes()])
    assert 0.4 < one_group < 0.65  # about half, plus random draws that land in one group


def test_open_set_episodes_hold_queries_of_other_classes_of_the_same_draw():
    groups = np.repeat(np.arange(4), 10)  # 4 "alphabets" of 10 characters
    images = np.repeat(np.arange(40, dtype=np.uint8), 20 * 28 * 28).reshape(40, 20, 28, 28)  # class id
    pool = ClassPool(images, [(i, 0) for i in range(40)], groups=groups)
    sampler = DeviceEpisodeSampler(pool, 5, 1, 2, 50, "cpu", 0, 100, within_alphabet=1.0, unknown=3)
    episode = sampler.sample()
    assert episode.support.shape == (50, 5, 1, 28, 28) and episode.query.shape == (50, 10, 1, 28, 28)
    assert episode.unknown.shape == (50, 6, 1, 28, 28)

    def classes(x: torch.Tensor) -> np.ndarray:  # [E, n, 1, 28, 28] -> class of each image [E, n]
        return x[..., 0, 0, 0].mul(255).round().long().numpy()

    held, unknown = classes(episode.support), classes(episode.unknown)
    for task_classes, other in zip(held, unknown, strict=True):
        assert not set(task_classes) & set(other) and len(set(other)) == 3
        assert len(set(groups[task_classes]) | set(groups[other])) == 1  # one alphabet
    assert (classes(episode.query) == held.repeat(2, axis=1)).all()
    with pytest.raises(ValueError, match="11 classes"):  # no alphabet holds 5 known and 6 unknown
        DeviceEpisodeSampler(pool, 5, 1, 2, 1, "cpu", 0, 100, within_alphabet=1.0, unknown=6)


def test_open_set_loss_asks_known_queries_to_beat_the_null_key_and_unknown_ones_not_to():
    shots = torch.ones(1, 2)
    own = torch.tensor([[[True, False], [False, False]]])  # a known query of row 0, an unknown query
    scale = torch.tensor(15.0)

    def loss(cosine: list[list[float]]) -> torch.Tensor:
        return train.open_set_loss(scale, torch.tensor([cosine]), shots, own, null_cosine=0.7)

    assert loss([[0.95, 0.1], [0.3, 0.2]]) < 0.05  # known close to its key, unknown far from all
    assert loss([[0.6, 0.1], [0.3, 0.2]]) > 0.5  # the known query is not above the null key
    assert loss([[0.95, 0.1], [0.3, 0.9]]) > 1.0  # the unknown query sits close to a key
    assert loss([[0.95, 0.98], [0.3, 0.2]]) > 0.4  # the known query is closer to another label
    cosine = torch.tensor([[[0.8, 0.1], [0.75, 0.2]]], requires_grad=True)
    train.open_set_loss(scale, cosine, shots, own, 0.7).backward()
    assert cosine.grad[0, 0, 0] < 0 and cosine.grad[0, 1, 0] > 0  # pull the known in, push the unknown out


def test_within_alphabet_trials_take_one_alphabet_and_two_drawers(evaluation_characters):
    from training.episodes import within_alphabet_episodes

    groups = np.repeat(np.arange(3), 20)
    pool = ClassPool(evaluation_characters.images[:60], [(i, 0) for i in range(60)], groups=groups)
    trials = within_alphabet_episodes(pool, way=20, trials=5, seed=0)
    again = within_alphabet_episodes(pool, way=20, trials=5, seed=0)
    for trial, same in zip(trials, again, strict=True):
        assert trial.support.shape == trial.query.shape == (20, 1, 28, 28)
        torch.testing.assert_close(trial.query, same.query)
        images = pool.images[:, :, None].astype(np.float32) / 255  # [60, 20, 1, 28, 28]
        found = [
            [np.flatnonzero((images[:, d] == x.numpy()).all(axis=(1, 2, 3))) for d in range(20)]
            for x in trial.support
        ]
        chars = {int(np.concatenate(f)[0]) // 20 for f in found}  # one alphabet (group of 20)
        drawers = {d for f in found for d, hits in enumerate(f) if len(hits)}
        assert len(chars) == 1 and len(drawers) == 1


def test_training_command_writes_checkpoint_metrics_plot_and_resumes(tmp_path, evaluation_characters):
    out, run_dir = tmp_path / "ckpt.safetensors", tmp_path / "run"
    argv = ["--split", "vinyals", "--way", "3", "--queries", "2", "--episodes", "2", "--val-every", "1"]
    argv += ["--val-tasks", "2", "--device", "cpu", "--compile", "none", "--batch", "1"]
    argv += ["--out", str(out), "--run-dir", str(run_dir)]
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


@pytest.mark.timeout(300)
def test_sigterm_stops_a_run_cleanly_and_resume_goes_on(tmp_path, evaluation_characters):
    out, run_dir = tmp_path / "ckpt.safetensors", tmp_path / "run"
    argv = ["--split", "vinyals", "--way", "3", "--queries", "2", "--val-every", "1", "--val-tasks", "2"]
    argv += ["--device", "cpu", "--compile", "none", "--batch", "1"]
    argv += ["--out", str(out), "--run-dir", str(run_dir)]
    command = [sys.executable, "-m", "training.train", *argv, "--episodes", "100000"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    run = subprocess.Popen(command, cwd=REPO, env=env, **pipes)
    metrics = run_dir / "metrics.csv"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):  # two episodes logged
        assert run.poll() is None and time.monotonic() < deadline, "the run ended or stalled unsignalled"
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr[-3000:]
    assert "SIGTERM: stopping" in stdout and "--resume continues" in stdout
    stopped = [int(row["episode"]) for row in csv.DictReader(metrics.open())]
    assert stopped == list(range(1, len(stopped) + 1)) and len(stopped) < 100  # one row per step, no gap
    assert out.exists() and (run_dir / "last.pt").exists()

    train.main([*argv, "--episodes", str(stopped[-1] + 1), "--resume"])
    resumed = [int(row["episode"]) for row in csv.DictReader(metrics.open())]
    assert resumed == [*stopped, stopped[-1] + 1]


def test_weight_average_of_a_runs_snapshots_is_their_mean_validated_like_the_run(
    tmp_path, capsys, evaluation_characters
):
    out, run_dir = tmp_path / "ckpt.safetensors", tmp_path / "run"
    argv = ["--split", "vinyals", "--way", "3", "--queries", "2", "--episodes", "3", "--val-every", "1"]
    argv += ["--val-tasks", "2", "--device", "cpu", "--compile", "none", "--batch", "1", "--snapshots"]
    train.main([*argv, "--out", str(out), "--run-dir", str(run_dir)])
    taken = snapshots.run_snapshots(run_dir)
    assert [p.name for p in taken] == [f"episode-00000000{n}.safetensors" for n in (1, 2, 3)]
    states = [load_file(str(p)) for p in taken]
    assert not torch.equal(states[1]["rep.conv1"], states[2]["rep.conv1"])  # the weights moved

    averaged = tmp_path / "average.safetensors"
    average.main(["--like", str(out), "--run-dir", str(run_dir), "--last", "2", "--out", str(averaged)])
    assert "average of 2 snapshots: validation accuracy" in capsys.readouterr().out
    model, metadata = load_checkpoint(averaged)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, (states[1][name] + states[2][name]) / 2)
    assert metadata["weight_average"]["episodes"] == [2, 3] and metadata["episodes"] == 3
    assert metadata["validation"]["tasks"] == 2 and metadata["split"] == "vinyals"
    with pytest.raises(ValueError, match="nothing to average"):
        average.average_states([])

    metadata = json.loads(out.with_suffix(".json").read_text())
    metadata["validation"]["accuracy"] = 100.0  # a checkpoint no average can beat
    out.with_suffix(".json").write_text(json.dumps(metadata))
    unbeaten = tmp_path / "unbeaten.safetensors"
    average.main(["--like", str(out), "--run-dir", str(run_dir), "--if-better", "--out", str(unbeaten)])
    assert "not written" in capsys.readouterr().out and not unbeaten.exists()

    train.main([*argv[:7], "1", *argv[8:], "--out", str(out), "--run-dir", str(run_dir)])  # a fresh run
    assert [p.name for p in snapshots.run_snapshots(run_dir)] == ["episode-000000001.safetensors"]


def test_open_set_training_validates_auroc_and_picks_the_checkpoint_by_it(tmp_path, evaluation_characters):
    out, run_dir = tmp_path / "ckpt.safetensors", tmp_path / "run"
    argv = ["--split", "vinyals", "--way", "3", "--queries", "2", "--episodes", "2", "--val-every", "1"]
    argv += ["--val-tasks", "2", "--device", "cpu", "--compile", "none", "--batch", "1"]
    argv += ["--open-set-loss", "1.0", "--unknown-classes", "2", "--select", "auroc"]
    train.main([*argv, "--out", str(out), "--run-dir", str(run_dir)])
    metadata = json.loads(out.with_suffix(".json").read_text())
    assert metadata["recipe"]["open_set_loss"] == 1.0 and metadata["recipe"]["select"] == "auroc"
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    best = max(float(row["val_auroc"]) for row in rows)
    assert metadata["validation"]["auroc"] == pytest.approx(best, abs=0.01)
    assert (run_dir / "learning_curve.png").stat().st_size > 1000


def test_the_standard_split_validates_on_the_alphabets_it_holds_out(evaluation_characters):
    background = load_archive("images_background")

    def alphabets(pool: ClassPool) -> set[str]:
        return {background.alphabet(char) for char, _ in pool.classes}

    held_out = ("Greek", "Latin")
    assert alphabets(load_split("standard", "val", held_out=held_out)) == set(held_out)
    trained = alphabets(load_split("standard", "train", held_out=held_out))
    assert not trained & set(held_out) and set(STANDARD_VALIDATION_ALPHABETS) <= trained
    assert alphabets(load_split("standard", "val")) == set(STANDARD_VALIDATION_ALPHABETS)
    with pytest.raises(ValueError, match="not background alphabets"):
        load_split("standard", "val", held_out=("Klingon",))
    assert validation_alphabets({}) == FIRST_VALIDATION_ALPHABETS  # checkpoints before the field


def test_training_records_its_validation_alphabets_and_refuses_trained_ones(tmp_path, evaluation_characters):
    out, run_dir = tmp_path / "ckpt.safetensors", tmp_path / "run"
    argv = ["--split", "standard", "--way", "3", "--queries", "2", "--episodes", "1", "--val-every", "1"]
    argv += ["--val-tasks", "2", "--device", "cpu", "--compile", "none", "--batch", "1"]
    held_out = ["--validation-alphabets", "Greek", "Korean"]
    train.main([*argv, *held_out, "--out", str(out), "--run-dir", str(run_dir)])
    assert validation_alphabets(read_metadata(out)) == ("Greek", "Korean")
    tuned = ["--init-from", str(out), "--out", str(tmp_path / "tuned.safetensors"), "--run-dir", str(run_dir)]
    with pytest.raises(SystemExit, match="Tagalog"):  # trained on by the checkpoint it starts from
        train.main([*argv, *tuned, "--validation-alphabets", "Greek", "Tagalog"])
    resumed = ["--out", str(out), "--run-dir", str(run_dir), "--resume"]
    with pytest.raises(SystemExit, match="resume with the same"):  # its last.pt held out Greek and Korean
        train.main([*argv, *resumed, "--validation-alphabets", "Korean"])


def test_evaluate_command_prints_one_json_object(tmp_path, capsys, evaluation_characters):
    torch.manual_seed(0)
    path = tmp_path / "model.safetensors"
    save_checkpoint(MetaNet(), path, {})
    argv = ["--checkpoint", str(path), "--split", "standard", "--way", "5", "--shot", "1"]
    evaluate.main([*argv, "--tasks", "3", "--seed", "1", "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"accuracy", "ci95", "attention_only_accuracy"} and 0 <= result["accuracy"] <= 100
    evaluate.main(
        [*argv, "--way", "20", "--protocol", "within-alphabet", "--tasks", "2", "--json", "--device", "cpu"]
    )
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "within-alphabet" and 0 <= result["attention_only_accuracy"] <= 100
