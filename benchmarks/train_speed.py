"""Training speed of MetaNet episodes, beside the floor set by the episode's arithmetic.

    python benchmarks/train_speed.py                      # 5-way 1-shot, 10 queries per class, CPU
    python benchmarks/train_speed.py --way 20 --device cuda

Prints and saves (``--json``, default docs/results/train_speed_<device>.json):
- measured episodes per second over ``--episodes`` training steps after a warm-up;
- floating-point operations of one training step (forward, meta-gradients, backward), counted
  by torch.utils.flop_counter (with grouped-convolution backward counted per group);
- the device's measured rate on a large float32 matrix product, and the resulting floor:
  episodes per second if every operation ran at that rate.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from model import MetaNet
from training.episodes import EpisodeSampler, load_split

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """Each requested gradient (input, weight) costs one forward convolution; groups are in w_shape."""
    # after the weight: bias_sizes, stride, padding, dilation, transposed, output_padding, groups, output_mask
    output_mask = args[7] if len(args) > 7 else kwargs.get("output_mask", [True, True, False])
    forward = 2 * grad_out_shape[0] * math.prod(grad_out_shape[1:]) * math.prod(w_shape[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def train_step(model: MetaNet, optimizer: torch.optim.Optimizer, sampler: EpisodeSampler, device) -> None:
    episode = sampler.sample().to(device)
    logits = model(episode.support, episode.support_labels, episode.query, episode.label_codes)
    loss = F.cross_entropy(logits, episode.query_labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()


def step_flops(model: MetaNet, optimizer, sampler, device) -> int:
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        train_step(model, optimizer, sampler, device)
    return counter.get_total_flops()


def matmul_rate(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Sustained float32 FLOP/s of a size x size matrix product on this device."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - began)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MetaNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = EpisodeSampler(load_split("vinyals", "train"), args.way, args.shot, args.queries, 0, 10_000)

    for _ in range(args.warmup):
        train_step(model, optimizer, sampler, device)
    sync(device)
    began = time.perf_counter()
    for _ in range(args.episodes):
        train_step(model, optimizer, sampler, device)
    sync(device)
    measured = args.episodes / (time.perf_counter() - began)

    flops = step_flops(model, optimizer, sampler, device)
    rate = matmul_rate(device)
    floor = rate / flops
    result = {
        "episode": f"{args.way}-way {args.shot}-shot, {args.queries} queries per class",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "episodes_per_s": round(measured, 3),
        "gflop_per_episode": round(flops / 1e9, 3),
        "matmul_gflop_per_s": round(rate / 1e9, 1),
        "floor_episodes_per_s": round(floor, 3),
        "fraction_of_floor": round(measured / floor, 3),
        "torch": torch.__version__,
    }
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    path = args.json or RESULTS / f"train_speed_{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
