"""Data-parallel training: gloo ranks on CPU give the same update as one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from model import MetaNet, MetaNetConfig
from testkit import REPO
from training.episodes import ClassPool, DeviceEpisodeSampler, Episode
from training.train import EpisodeModel, LossWeights, train_step

CONFIG = MetaNetConfig(max_task_examples=5, signed_keys=True)
LOSS = LossWeights(attention=0.5, open_set=0.5)  # every term of the recipe's loss


def fresh_model() -> MetaNet:
    torch.manual_seed(0)
    model = MetaNet(CONFIG)
    for head in (model.m_conv.net[-1], model.m_fc.net[-1], model.d_rep.head):  # a fast path that matters
        torch.nn.init.normal_(head.weight, std=0.02)
    return model


def half(episode: Episode, rank: int) -> Episode:
    size = episode.support.shape[0] // 2
    return Episode(*(t[rank * size : (rank + 1) * size] for t in vars(episode).values()))


def rank_step(rank: int, world: int, init_file: str, episode_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = fresh_model()
    net = DistributedDataParallel(EpisodeModel(model))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_step(net, optimizer, half(Episode(**torch.load(episode_file)), rank), 10.0, LOSS)
    if rank == 0:
        torch.save(model.state_dict(), out_file)
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_ranks_make_the_update_of_one_process(evaluation_characters, tmp_path: Path):
    pool = ClassPool(evaluation_characters.images[:40], [(i, 0) for i in range(40)])
    episode = DeviceEpisodeSampler(
        pool, way=5, shot=1, queries=2, batch=4, device="cpu", seed=3, code_rows=100, unknown=2
    )
    episode = episode.sample()
    torch.save(vars(episode), tmp_path / "episode.pt")

    single = fresh_model()
    optimizer = torch.optim.Adam(single.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in single.state_dict().items()}
    train_step(EpisodeModel(single), optimizer, episode, 10.0, LOSS)

    args = (2, str(tmp_path / "init"), str(tmp_path / "episode.pt"), str(tmp_path / "ranks.pt"))
    mp.spawn(rank_step, args=args, nprocs=2, join=True)
    ranks = torch.load(tmp_path / "ranks.pt")
    # Adam's first step moves a weight by about lr * g / |g|, so a weight whose gradient is near
    # zero moves by a rounding-sensitive amount: 1% of lr allows that and no other difference
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ranks[name], value, atol=1e-5, rtol=1e-5, msg=name)
    assert any(not torch.equal(before[k], v) for k, v in single.state_dict().items())


@pytest.mark.timeout(300)
def test_torchrun_trains_with_two_processes_and_writes_once(evaluation_characters, tmp_path: Path):
    out = tmp_path / "ck.safetensors"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "training.train",
        "--split", "standard", "--way", "5", "--queries", "2", "--batch", "1", "--episodes", "8",
        "--val-every", "4", "--val-tasks", "2", "--task-examples", "5", "--compile", "none",
        "--device", "cpu", "--out", str(out), "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["episode"]) for r in rows] == [4, 8]  # 2 episodes per step: one per rank
    assert out.exists() and (tmp_path / "run" / "last.pt").exists()
    assert done.stdout.count("best validation accuracy") == 1
