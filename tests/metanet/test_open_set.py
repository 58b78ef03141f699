"""Open-set tasks, novelty scores, AUROC and the stored calibration, on real Omniglot drawings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model import MetaNet, MetaNetConfig
from model.checkpoint import load_checkpoint, save_checkpoint
from model.inference import MetaNetPredictor
from model.novelty import OpenSetCalibration, novelty
from training import novelty_scores, open_set, open_set_metrics, open_set_tasks, threshold_calibration
from training.episodes import UNKNOWN, ClassPool, EpisodeSampler


@pytest.fixture(scope="module")
def pool(evaluation_characters) -> ClassPool:
    return ClassPool(evaluation_characters.images[:40], [(i, 0) for i in range(40)])


@pytest.fixture(scope="module")
def model() -> MetaNet:
    torch.manual_seed(0)
    return MetaNet(MetaNetConfig(channels=16, max_task_examples=5, signed_keys=True)).eval()


def test_open_set_tasks_are_the_closed_set_tasks_plus_unknown_queries(pool: ClassPool) -> None:
    closed = EpisodeSampler(pool, way=5, shot=1, queries=3, seed=4)
    opened = open_set_tasks.OpenSetSampler(pool, way=5, shot=1, queries=3, unknown=4, seed=4)
    for _ in range(3):
        reference, chosen = closed.sample_with_classes()
        episode = opened.sample()
        torch.testing.assert_close(episode.support, reference.support)
        torch.testing.assert_close(episode.query, reference.query)
        queries, labels = episode.open_set_queries()
        assert queries.shape == (15 + 12, 1, 28, 28) and (queries[:15] == episode.query).all()
        assert (labels[15:] == UNKNOWN).all() and (labels[:15] == reference.query_labels).all()
        unknown = episode.unknown[:, 0]  # every unknown drawing is of a class outside the task
        task_images = torch.as_tensor(pool.images[chosen]).float() / 255  # [5, 20, 28, 28]
        assert not (unknown[:, None, None] == task_images[None]).flatten(-2).all(-1).any()


def test_each_query_carries_the_alphabet_of_its_class(evaluation_characters) -> None:
    groups = np.arange(40) // 10 * 4  # four alphabets of ten characters, upright
    pool = ClassPool(evaluation_characters.images[:40], [(i, 0) for i in range(40)], groups=groups)
    closed = EpisodeSampler(pool, way=5, shot=1, queries=2, seed=3)
    sampler = open_set_tasks.OpenSetSampler(pool, way=5, shot=1, queries=2, unknown=5, seed=3)
    for _ in range(3):
        _, chosen = closed.sample_with_classes()
        episode, alphabets = sampler.sample_with_groups()
        labels = episode.open_set_queries()[1]
        known = labels != UNKNOWN
        assert (alphabets[~known.numpy()] == UNKNOWN).all()
        np.testing.assert_array_equal(alphabets[known.numpy()], chosen[labels[known]] // 10)


def test_balanced_threshold_weighs_every_alphabet_alike() -> None:
    rng = np.random.default_rng(0)
    tight, loose = rng.uniform(0, 1, 900), rng.uniform(0, 2, 100)  # a big easy and a small hard alphabet
    scores, alphabets = np.concatenate([tight, loose]), np.repeat([0, 1], [900, 100])
    threshold = threshold_calibration.balanced_threshold(scores, alphabets, 0.1)
    rates = [(tight > threshold).mean(), (loose > threshold).mean()]
    assert np.mean(rates) <= 0.1 and rates[1] > 0.1  # the pooled rate would be lower still
    below = scores[scores < threshold].max()  # the next lower candidate misses the target
    assert np.mean([(tight > below).mean(), (loose > below).mean()]) > 0.1
    pooled = threshold_calibration.balanced_threshold(scores, np.zeros_like(alphabets), 0.1)
    assert pooled == pytest.approx(np.quantile(scores, 0.9), abs=0.01) and pooled < threshold
    held_out = threshold_calibration.leave_one_alphabet_out(scores, alphabets, 0.1)
    assert [h["alphabet"] for h in held_out] == [0, 1]
    assert held_out[0]["false_rejection_rate"] == 0.0  # calibrated on the loose one alone
    assert held_out[1]["false_rejection_rate"] > 10.0


def test_auroc_counts_ordered_pairs_with_ties_as_half() -> None:
    rng = np.random.default_rng(0)
    known, unknown = rng.integers(0, 5, 40).astype(float), rng.integers(2, 8, 30).astype(float)
    pairs = (unknown[None, :] > known[:, None]) + 0.5 * (unknown[None, :] == known[:, None])
    assert open_set_metrics.auroc(known, unknown) == pytest.approx(pairs.mean())
    assert open_set_metrics.auroc(np.zeros(3), np.ones(3)) == 1.0


def test_key_scores_agree_without_the_base_learner(model: MetaNet, pool: ClassPool) -> None:
    episode = open_set_tasks.OpenSetSampler(pool, way=5, shot=1, queries=2, unknown=5, seed=0).sample()
    with torch.no_grad():
        logits, votes, full = novelty_scores.candidate_scores(model, episode, full_model=True)
        none, keys_votes, keys_only = novelty_scores.candidate_scores(model, episode, full_model=False)
    assert logits.shape == (20, 5) and none is None
    assert set(full) == set(novelty_scores.CANDIDATES) and set(keys_only) < set(full)
    torch.testing.assert_close(keys_votes, votes)
    for name, value in keys_only.items():
        torch.testing.assert_close(value, full[name])


def test_server_novelty_is_the_evaluated_score(model: MetaNet, pool: ClassPool) -> None:
    """The novelty the classify pass answers (what the server answers) equals the score evaluation
    measured, with dense attention and with top-k attention over exact neighbours."""
    episode = open_set_tasks.OpenSetSampler(pool, way=4, shot=1, queries=2, unknown=3, seed=1).sample()
    predictor = MetaNetPredictor(model)
    images = (episode.support[:, 0] * 255).round().to(torch.uint8)
    task = predictor.build_memory(images, [f"c{i}" for i in range(4)])
    queries = (episode.open_set_queries()[0][:, 0] * 255).round().to(torch.uint8)
    with torch.no_grad():
        scores = novelty_scores.candidate_scores(model, episode, full_model=False)[2]
    evaluated = scores["nearest_key_distance"]
    dense = predictor.classify_batch([(task, queries)])[0].novelty
    torch.testing.assert_close(dense, evaluated, atol=1e-5, rtol=0)
    top = (predictor.embed_queries(task, queries) @ task.keys.T).topk(2)
    topk = predictor.classify_batch([(task, queries)], [(top.indices, top.values)])[0].novelty
    torch.testing.assert_close(topk, evaluated, atol=1e-5, rtol=0)
    stored = predictor.classify_batch([(task, images)])[0].novelty
    assert stored.max() < 1e-5  # a stored example is not novel at all


def test_calibration_rejects_the_target_share_and_round_trips(model, pool, tmp_path) -> None:
    thresholds, summary = threshold_calibration.calibrate(
        model, pool, ways=[5], tasks=4, queries=5, false_rejection=0.2, seed=0, device="cpu", batch=2
    )
    assert summary["5-way"]["false_rejection_rate"] == pytest.approx(20.0, abs=2.0)
    assert set(thresholds) == {"nearest_key_distance", "attention", "key_margin", "task_normalized_distance"}
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, {"split": "standard"})
    open_set.main(["--checkpoint", str(path), "--split", "standard", "--tasks", "2", "--ways", "5"])
    stored = OpenSetCalibration.from_metadata(json.loads(path.with_suffix(".json").read_text()))
    assert stored is not None and stored.false_rejection_target == 0.05 and stored.threshold > 0
    assert "standard/val" in stored.calibrated_on and stored.command.startswith("python -m training.open_set")
    assert stored.known(torch.tensor([stored.threshold, stored.threshold + 1e-3])).tolist() == [True, False]
    assert OpenSetCalibration.from_metadata(load_checkpoint(path)[1]) == stored


def test_one_command_calibrates_then_records_test_tasks(model, tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, {"split": "standard"})
    args = [
        "--checkpoint",
        str(path),
        "--split",
        "standard",
        "--tasks",
        "2",
        "--ways",
        "5",
        "--test-tasks",
        "3",
    ]
    open_set.main(args)
    stored = json.loads(path.with_suffix(".json").read_text())["open_set"]
    assert "mean of the alphabets" in stored["calibrated_on"]
    assert len(stored["validation"]["leave_one_alphabet_out"]) == 3  # the three held-out alphabets
    result = stored["test"]["standard/test 5-way 1-shot open-set"]
    assert result["tasks"] == 3 and result["threshold"] == stored["threshold"]
    assert result["known_queries"] == result["unknown_queries"] == 3 * 25
    assert len(result["false_rejection_by_alphabet"]) > 1 and result["wall_time_s"] >= 0  # 0.0 when quick


def test_novelty_is_one_minus_the_nearest_cosine() -> None:
    keys = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]), dim=-1)
    torch.testing.assert_close(
        novelty(queries, keys), torch.tensor([0.0, 1 - 2**-0.5, 1.0]), atol=1e-3, rtol=0
    )


def test_evaluate_open_set_records_the_test_result_and_saves_scores(model, tmp_path, capsys) -> None:
    from training import evaluate

    path, scores = tmp_path / "model.safetensors", tmp_path / "scores.npz"
    save_checkpoint(model, path, {"split": "standard"})
    open_set.main(["--checkpoint", str(path), "--split", "standard", "--tasks", "2", "--ways", "5"])
    capsys.readouterr()
    common = ["--checkpoint", str(path), "--split", "standard", "--way", "5", "--tasks", "2", "--open-set"]
    evaluate.main([*common, "--keys-only", "--json", "--record", "--scores", str(scores)])
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads(path.with_suffix(".json").read_text())["open_set"]["test"]
    assert stored["standard/test 5-way 1-shot open-set"] == printed and printed["tasks"] == 2
    saved = np.load(scores)
    assert saved["labels"].shape == saved["alphabets"].shape == saved["nearest_key_distance"].shape == (2, 50)
    assert ((saved["labels"] == UNKNOWN) == (saved["alphabets"] == UNKNOWN)).all()
    with pytest.raises(SystemExit):  # validation results are not test results
        evaluate.main([*common, "--part", "val", "--keys-only", "--json", "--record"])
