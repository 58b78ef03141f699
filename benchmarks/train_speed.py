"""Training and evaluation speed of MetaNet episodes, beside the floor set by their arithmetic.

    python -m benchmarks.train_speed                                  # 5-way 1-shot, CPU
    python -m benchmarks.train_speed --processes 2                    # two gloo ranks, 1 thread each
    python -m benchmarks.train_speed --d-kernel torch                 # d without its fused CPU kernel
    python -m benchmarks.train_speed --device cuda --way 20 --batch 16
    python -m benchmarks.train_speed --stage keys --threads 1         # stage 1 (training.train_keys)

Runs the training engine itself (training.train.train_step on a DeviceEpisodeSampler meta-batch,
compiled as training compiles it) and the evaluation loop (training.evaluate), and prints and
saves (``--json``, default docs/results/train_speed_<device>_<way>way.json):
- training episodes per second over ``--steps`` steps after a warm-up (compilation included
  in the warm-up, not in the figure); with ``--processes N`` (CPU), N data-parallel ranks
  (DistributedDataParallel over gloo, one thread each, as ``torchrun`` trains) each draw their
  own episodes and the figure is all ranks' episodes over the wall time;
- floating-point operations of one episode (forward, meta-gradients, backward), counted by
  torch.utils.flop_counter (with grouped-convolution backward counted per group; d in its PyTorch
  form, whose arithmetic its fused CPU kernel does too);
- the device's measured rate on a large float32 matrix product (TF32 on CUDA, as training uses),
  and the floor: episodes per second if every operation ran at that rate;
- evaluation tasks per second (``--way``-way, 5 queries per class);
- with ``--profile PATH``, where a training step's time goes: the profiler's table of the
  operators (and GPU kernels) with the most self time over three more steps, written to PATH.

``--stage keys`` times stage 1 instead (``training.train_keys``: u alone on 60-way prototypical
episodes, augmented, compiled as it trains): images per second, FLOPs per image and the floor
(default JSON docs/results/train_speed_<device>_keys.json).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from model import MetaNet, MetaNetConfig
from training.data import DEFAULT_DATA
from training.devices import default_compile, default_episodes_per_step, default_tasks_per_forward
from training.episodes import DeviceEpisodeSampler, load_split
from training.evaluate import task_accuracies
from training.recipe import read_recipe
from training.train import DEFAULT_CLIP, EpisodeModel, add_episode_flags, train_step
from training.train_keys import episode_loss, key_parameters
from training.train_keys import train_step as keys_train_step

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
KEYS_RECIPE = REPO / "configs" / "keys-standard.toml"  # the episode that --stage keys times


def conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """Each requested gradient (input, weight) costs one forward convolution; groups are in w_shape."""
    # after the weight: bias_sizes, stride, padding, dilation, transposed, output_padding, groups, output_mask
    output_mask = args[7] if len(args) > 7 else kwargs.get("output_mask", [True, True, False])
    forward = 2 * grad_out_shape[0] * math.prod(grad_out_shape[1:]) * math.prod(w_shape[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def step_flops(config: MetaNetConfig, sampler: DeviceEpisodeSampler, device: torch.device) -> int:
    """FLOPs of one training step on an uncompiled copy of the model (the counter needs eager ops),
    d in its PyTorch form (the counter cannot see into d's fused kernel, which does the same
    arithmetic)."""
    model = MetaNet(config).to(device)
    model.d_kernel = "torch"
    optimizer = torch.optim.Adam(model.parameters())
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        train_step(EpisodeModel(model), optimizer, sampler.sample(), DEFAULT_CLIP)
    return counter.get_total_flops()


def matmul_rate(device: torch.device, size: int = 4096, repeats: int = 10) -> float:
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


def profile_steps(model: MetaNet, sampler: DeviceEpisodeSampler, device: torch.device, path: Path) -> None:
    """Profile three training steps (after one untimed one) and write the top operators by self time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    net = EpisodeModel(model)
    train_step(net, optimizer, sampler.sample(), DEFAULT_CLIP)
    sync(device)
    with profile(activities=activities, record_shapes=True) as profiler:
        for _ in range(3):
            train_step(net, optimizer, sampler.sample(), DEFAULT_CLIP)
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages(group_by_input_shape=True).table(
        sort_by=sort, row_limit=40, max_name_column_width=60
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
    print(f"profile of 3 steps: {path}")


def training_speed(
    args: argparse.Namespace, device: torch.device, batch: int, steps: int, compile_mode: str, rank: int = 0
) -> tuple[float, float]:
    """(episodes per second of this process, warm-up seconds): the training engine itself,
    ``args.warmup`` steps, then ``steps`` timed ones (under DistributedDataParallel when a process
    group is up, each rank drawing its own episodes)."""
    torch.manual_seed(0)
    config = MetaNetConfig(max_task_examples=args.task_examples)
    model = MetaNet(config).to(device)
    model.compile_meta_learners(compile_mode)
    model.d_dtype = torch.bfloat16 if args.d_bf16 else None
    model.d_kernel = args.d_kernel
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    pool = load_split("vinyals", "train", args.data)
    sampler = DeviceEpisodeSampler(
        pool, args.way, args.shot, args.queries, batch, device, rank, config.max_labels
    )
    net = EpisodeModel(model)
    if dist.is_initialized():
        net = DistributedDataParallel(net)

    def clock() -> float:
        sync(device)
        if dist.is_initialized():
            dist.barrier()
        return time.perf_counter()

    began = time.perf_counter()
    for _ in range(args.warmup):
        train_step(net, optimizer, sampler.sample(), DEFAULT_CLIP)
    warmed = clock()
    for _ in range(steps):
        train_step(net, optimizer, sampler.sample(), DEFAULT_CLIP)
    return steps * batch / (clock() - warmed), warmed - began


def keys_speed(args: argparse.Namespace, device: torch.device) -> dict:
    """Stage 1's step (``training.train_keys``): images/s against the floor of its arithmetic."""
    recipe = read_recipe(KEYS_RECIPE)
    way, queries = recipe["way"], recipe["queries"]
    torch.manual_seed(0)
    model = MetaNet(MetaNetConfig(signed_keys=True)).to(device)
    optimizer = torch.optim.Adam(key_parameters(model))
    pool = load_split("standard", "train", args.data)
    sampler = DeviceEpisodeSampler(pool, way, 1, queries, 1, device, 0, way)
    rng = torch.Generator(device).manual_seed(0)
    compiled = torch.compile(episode_loss, dynamic=False)

    def step(loss_fn) -> None:
        keys_train_step(model, optimizer, sampler.sample(), recipe["augment"], rng, loss_fn)

    images = way * (1 + queries)
    steps = args.steps or 20
    began = time.perf_counter()
    for _ in range(max(args.warmup, 2)):
        step(compiled)
    warmed = time.perf_counter()
    for _ in range(steps):
        step(compiled)
    sync(device)
    measured = steps * images / (time.perf_counter() - warmed)
    print(f"keys stage: {measured:.0f} images/s (warm-up {warmed - began:.0f} s)", flush=True)
    with FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}
    ) as c:
        step(episode_loss)
    flops = c.get_total_flops() / images
    rate = matmul_rate(device)
    return {
        "stage": f"keys: {way}-way prototypical episodes, 1 support + {queries} queries per class",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "images_per_s": round(measured, 1),
        "mflop_per_image": round(flops / 1e6, 2),
        "matmul_gflop_per_s": round(rate / 1e9, 1),
        "floor_images_per_s": round(rate / flops, 1),
        "fraction_of_floor": round(measured * flops / rate, 3),
        "torch": torch.__version__,
    }


def _rank(rank: int, world: int, init_file: str, args: argparse.Namespace, batch, steps, compile_mode, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    rate, warmup_s = training_speed(args, torch.device("cpu"), batch, steps, compile_mode, rank)
    if rank == 0:
        Path(out).write_text(json.dumps([rate * world, warmup_s]))
    dist.destroy_process_group()


def data_parallel_speed(
    args: argparse.Namespace, batch: int, steps: int, compile_mode: str
) -> tuple[float, float]:
    """(episodes per second of all ranks together, warm-up seconds) of ``args.processes`` gloo ranks."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "speed.json"
        config = (args.processes, str(Path(scratch) / "init"), args, batch, steps, compile_mode, str(out))
        mp.spawn(_rank, args=config, nprocs=args.processes, join=True)
        rate, warmup_s = json.loads(out.read_text())
    return rate, warmup_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_episode_flags(parser)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: ~30 episodes)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-tasks", type=int, default=None, help="evaluation tasks to time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--processes", type=int, default=1, help="data-parallel gloo ranks on the CPU, 1 thread each"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Omniglot zips and splits/")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="write a profile of 3 training steps here")
    parser.add_argument(
        "--stage", choices=["metanet", "keys"], default="metanet", help="which training stage"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.stage == "keys":
        result = keys_speed(args, device)
        for key, value in result.items():
            print(f"{key:>22}: {value}")
        path = args.json or RESULTS / f"train_speed_{device.type}_keys.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {path}")
        return
    batch = args.batch or default_episodes_per_step(device)
    steps = args.steps or max(3, math.ceil(30 / batch))
    compile_mode = args.compile or default_compile(device)
    if args.processes > 1:
        measured, warmup_s = data_parallel_speed(args, batch, steps, compile_mode)
    else:
        measured, warmup_s = training_speed(args, device, batch, steps, compile_mode)
    # the headline first: what follows (profile, evaluation, FLOP count) can outlast a caller's limit
    print(
        f"training: {measured:.2f} episodes/s ({batch} per step, compile {compile_mode}, "
        f"warm-up {warmup_s:.0f} s)",
        flush=True,
    )
    torch.manual_seed(0)
    config = MetaNetConfig(max_task_examples=args.task_examples)
    model = MetaNet(config).to(device)
    model.compile_meta_learners(compile_mode)
    model.d_kernel = args.d_kernel
    pool = load_split("vinyals", "train", args.data)
    sampler = DeviceEpisodeSampler(
        pool, args.way, args.shot, args.queries, batch, device, 0, config.max_labels
    )

    if args.profile:
        profile_steps(model, sampler, device, args.profile)

    eval_batch = default_tasks_per_forward(device)
    eval_tasks = args.eval_tasks or 8 * eval_batch
    val_pool = load_split("vinyals", "val", args.data)
    task_accuracies(model, val_pool, args.way, args.shot, 5, eval_batch, 0, device)  # warm-up
    sync(device)
    began = time.perf_counter()
    task_accuracies(model, val_pool, args.way, args.shot, 5, eval_tasks, 1, device)
    sync(device)
    eval_rate = eval_tasks / (time.perf_counter() - began)

    flops = step_flops(config, sampler, device) / batch
    rate = matmul_rate(device)
    floor = rate / flops
    result = {
        "episode": f"{args.way}-way {args.shot}-shot, {args.queries} queries/class, T={args.task_examples}",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads() if args.processes == 1 else 1,
        "processes": args.processes,
        "episodes_per_step": batch,
        "compile": compile_mode,
        "d_dtype": "bfloat16" if args.d_bf16 else "float32",
        "d_kernel": "fused" if model.d_is_fused(device) else "torch",
        "warmup_s": round(warmup_s, 1),
        "episodes_per_s": round(measured, 3),
        "gflop_per_episode": round(flops / 1e9, 3),
        "matmul_gflop_per_s": round(rate / 1e9, 1),
        "floor_episodes_per_s": round(floor, 3),
        "fraction_of_floor": round(measured / floor, 3),
        "eval_tasks_per_s": round(eval_rate, 3),
        "eval_tasks_per_forward": eval_batch,
        "torch": torch.__version__,
    }
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    path = args.json or RESULTS / f"train_speed_{device.type}_{args.way}way.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
