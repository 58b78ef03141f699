r"""Train MetaNet on Omniglot episodes, a meta-batch of episodes per optimizer step.

    python -m training.train --split vinyals --way 20 --max-minutes 30 \
        --out checkpoints/omniglot-vinyals.safetensors
    torchrun --nproc-per-node 2 -m training.train ...      # data-parallel over processes or GPUs

Each step draws ``--batch`` episodes per process on the training device (the image set stays
resident there), runs them as one vectorized forward pass, and takes one Adam step on the mean
query loss (gradient norm clipped at ``--clip``; the original code: one episode per step, lr 1e-3,
clip 10). The learning rate warms up, then follows a cosine to zero over the run, whose length is
``--episodes`` or ``--max-minutes``, whichever ends first. Under ``torchrun`` every rank draws
its own episodes, DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on CPU),
and rank 0 alone validates, logs and writes checkpoints.

Every ``--val-every`` episodes the model is evaluated on held-out validation classes and the
best one is written to ``--out`` (safetensors + JSON metadata). ``--run-dir`` holds the metrics
log (metrics.csv), a resumable state (last.pt) and the learning-curve plot; ``--resume``
continues from it, schedule included. SIGTERM or Ctrl-C stops a run the same clean way as the
time limit (within 10 steps: a last validation, checkpoint and state written, exit status 0).
With ``--snapshots`` it also keeps the weights of every validation, which ``training.average``
averages.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model import fused_d
from model.checkpoint import read_metadata, save_checkpoint, training_metadata
from model.config import MetaNetConfig
from model.fast_weights import init_quiet
from model.metanet import MetaNet
from training.data import DEFAULT_DATA
from training.devices import default_compile, default_device, default_episodes_per_step
from training.episodes import (
    STANDARD_VALIDATION_ALPHABETS,
    DeviceEpisodeSampler,
    Episode,
    held_out_alphabets,
    load_split,
)
from training.plots import plot_learning_curve
from training.recipe import parse_with_recipe, recorded_command
from training.snapshots import clear_snapshots, save_snapshot
from training.validation import validate

DEFAULT_CLIP = 10.0  # the gradient-norm clip of the original code, both stages
# how often the loop reads its clock and the stop signal (a broadcast under torchrun), in steps
CLOCK_EVERY_STEPS = 10

METRICS = [
    "episode",
    "elapsed_s",
    "lr",
    "train_loss",
    "train_accuracy",
    "train_attention_accuracy",
    "val_accuracy",
    "val_ci95",
    "val_attention_accuracy",
    "val_auroc",
]


def hardware(device: torch.device, world_size: int = 1) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return name if world_size == 1 else f"{world_size} x {name}"


@dataclass(frozen=True)
class LossWeights:
    """The training loss: the query cross-entropy of the full model, plus optional auxiliary terms.

    attention: weight of the negative log attention on the right label (trains u on the memory read).
    open_set: weight of the open-set attention loss (``open_set_loss``), which needs episodes with
        unknown queries (``DeviceEpisodeSampler(unknown=...)``).
    open_set_cosine: the cosine of the null key of ``open_set_loss``.
    """

    attention: float = 0.0
    open_set: float = 0.0
    open_set_cosine: float = 0.7


def open_set_loss(
    scale: torch.Tensor,
    cosine: torch.Tensor,
    shots: torch.Tensor,
    own: torch.Tensor,
    null_cosine: float,
) -> torch.Tensor:
    """Attention with a null key: every query attends over the memory's keys and a "none of these"
    slot at cosine ``null_cosine``. A known query must put its weight on its own label's keys, an
    unknown one on the null slot, so a known query's nearest key must beat a fixed cosine and an
    unknown query's must not: the served rule (known when the nearest key is close enough) as a loss.

    scale: the attention's inverse temperature; cosine: [E, Q, n] every query (known and unknown)
    against the memory keys; shots: [E, n] examples of each row's label; own: [E, Q, n] True where the
    row holds the query's label (all False for an unknown query). Returns the mean negative log
    likelihood over all queries."""
    scores = scale * cosine - shots.log().unsqueeze(-2)  # [E, Q, n]
    null = (scale * null_cosine).expand(scores.shape[:-1]).unsqueeze(-1)  # [E, Q, 1]
    log_p = torch.log_softmax(torch.cat([scores, null], dim=-1), dim=-1)
    known = own.any(-1)
    on_own = torch.logsumexp(log_p[..., :-1].masked_fill(~own, -math.inf), dim=-1)
    return -torch.where(known, on_own, log_p[..., -1]).mean()


def episode_loss(
    model: torch.nn.Module, episode: Episode, weights: LossWeights = LossWeights()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean query cross-entropy of a meta-batch of episodes plus the auxiliary terms of ``weights``.

    Returns (loss, full-model hits [E, q], attention-only hits [E, q])."""
    queries, query_labels = episode.open_set_queries()  # [E, q + u, ...], the unknown ones UNKNOWN
    logits, votes, open_set = model(
        episode.support, episode.support_labels, queries, episode.label_codes, episode.query.shape[-4]
    )
    loss = F.cross_entropy(logits.flatten(0, -2), episode.query_labels.flatten())
    if weights.attention:
        right = votes.gather(-1, episode.query_labels.unsqueeze(-1)).clamp_min(1e-8)
        loss = loss - weights.attention * right.log().mean()
    if weights.open_set:
        scale, cosine, shots = open_set
        own = episode.support_labels.unsqueeze(-2) == query_labels.unsqueeze(-1)  # [E, q + u, n]
        loss = loss + weights.open_set * open_set_loss(scale, cosine, shots, own, weights.open_set_cosine)
    labels = episode.query_labels
    return loss, logits.argmax(-1) == labels, votes.argmax(-1) == labels


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    episode: Episode,
    clip: float,
    weights: LossWeights = LossWeights(),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on a meta-batch; no host synchronization. Returns detached
    (loss, full-model accuracy, attention-only accuracy)."""
    loss, hits, votes = episode_loss(model, episode, weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach(), hits.float().mean().detach(), votes.float().mean().detach()


class EpisodeModel(torch.nn.Module):
    """A meta-batch of episodes through MetaNet, as a module's forward for DistributedDataParallel."""

    def __init__(self, model: MetaNet) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        support: torch.Tensor,
        labels: torch.Tensor,
        queries: torch.Tensor,
        label_codes: torch.Tensor,
        known: int,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """queries: [E, q + u, 1, H, W], the first ``known`` = q of the episodes' labels, the rest
        unknown (``Episode.open_set_queries``). Returns (logits [E, q, K] of the known queries, their
        label attention [E, q, K], and for ``open_set_loss``: (attention scale, cosines [E, q + u, n]
        of every query against the memory keys, shots [E, n]))."""
        model = self.model
        memory = model.build_memory(support, labels, label_codes)
        keys = model.embed(queries, memory.rep_task_weights)  # [E, q + u, C]
        attention = model.read_attention(memory, keys[..., :known, :])
        logits = model.query_logits(queries[..., :known, :, :, :], memory, attention)
        cosine = keys @ memory.keys.transpose(-1, -2)
        open_set = (model.log_attention_scale.exp(), cosine, model.shots_per_row(memory))
        return logits, model.label_attention(memory, attention), open_set


def learning_rate(base: float, step: int, warmup: int, progress: float, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine in ``progress`` (0..1)."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "constant":
        return base * warm
    return base * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def revive_silent_heads(model: MetaNet) -> None:
    """Give generator heads that are exactly zero a quiet random start (see model/fast_weights.py)."""
    heads = [model.m_conv.net[-1], model.m_fc.net[-1]] + [d.head for d in (model.d_rep, model.d_base) if d]
    for head in heads:
        if not head.weight.detach().any():
            init_quiet(head)


def add_episode_flags(parser: argparse.ArgumentParser) -> None:
    """The episode and engine flags, with their defaults, of this command and of
    ``benchmarks.train_speed`` (which times this engine)."""
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--queries", type=int, default=10, help="query images per class in each episode")
    parser.add_argument(
        "--batch", type=int, default=None, help="episodes per step and process (default: cpu 1, cuda 16)"
    )
    parser.add_argument("--task-examples", type=int, default=20, help="T: support examples d reads")
    parser.add_argument(
        "--compile", choices=["none", "d", "all"], default=None, help="default: by device, cpu d, cuda all"
    )
    parser.add_argument(
        "--d-bf16", action="store_true", help="d's arithmetic in bfloat16 (faster; accuracy not yet shown)"
    )
    parser.add_argument(
        "--d-kernel",
        choices=fused_d.KERNELS,
        default="auto",
        help="auto: d by its fused kernel on a CPU (model/fused_d.py); torch: as PyTorch operations",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder with the Omniglot zips and splits/"
    )
    parser.add_argument("--split", choices=["vinyals", "standard"], default="vinyals")
    parser.add_argument("--variant", choices=["metanet", "minus", "plus"], default="metanet")
    add_episode_flags(parser)
    parser.add_argument("--episodes", type=int, default=20_000, help="episodes in all (every process)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall time")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--clip", type=float, default=DEFAULT_CLIP, help="gradient norm clip")
    parser.add_argument("--signed-keys", action="store_true", help="memory keys before u's last ReLU")
    parser.add_argument("--relative-fast-weights", action="store_true", help="fast weights m(g) - m(0)")
    parser.add_argument("--attention-loss", type=float, default=0.0, help="weight of the auxiliary loss")
    parser.add_argument(
        "--within-alphabet", type=float, default=0.0, help="share of within-alphabet episodes"
    )
    parser.add_argument(
        "--open-set-loss", type=float, default=0.0, help="weight of the open-set attention loss"
    )
    parser.add_argument(
        "--open-set-cosine", type=float, default=0.7, help="cosine of the open-set loss's null key"
    )
    parser.add_argument(
        "--unknown-classes",
        type=int,
        default=5,
        help="with --open-set-loss: classes per episode whose queries the episode does not hold",
    )
    parser.add_argument(
        "--select",
        choices=["accuracy", "auroc"],
        default="accuracy",
        help="validation figure that picks the checkpoint (auroc: open-set, computed with --open-set-loss)",
    )
    parser.add_argument(
        "--rotation-augment",
        action="store_true",
        help="standard split: one class per character, rotated at random (default: rotations are classes)",
    )
    parser.add_argument(
        "--validation-alphabets",
        nargs="+",
        default=None,
        metavar="ALPHABET",
        help="standard split: background alphabets held out of training for validation and the "
        "open-set calibration (default: the --init-from checkpoint's, else "
        f"{', '.join(STANDARD_VALIDATION_ALPHABETS)})",
    )
    parser.add_argument("--val-every", type=int, default=500, help="episodes between validations")
    parser.add_argument("--val-tasks", type=int, default=200)
    parser.add_argument("--val-way", type=int, default=None, help="default: --way")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--out", type=Path, required=True, help="best checkpoint (.safetensors)")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/<checkpoint name>")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--snapshots",
        action="store_true",
        help="keep the weights of every validation in <run-dir>/snapshots/ (for training.average)",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from a checkpoint's weights (fast-weight heads stuck at exactly zero are re-initialized)",
    )
    parser.add_argument(
        "--freeze-keys",
        action="store_true",
        help="keep u's slow weights and the attention scale as initialized (stage 2 on top of "
        "training.train_keys): b, m and d learn, d's Q* still changes the keys",
    )
    return parse_with_recipe(parser, argv)


def setup_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device_arg)
    if world == 1:
        return 0, 1, device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGTERM or SIGINT sets while the block runs (a second SIGINT interrupts at once).

    The loop reads it with its clock, so a run asked to stop (a preempted machine, a session's end,
    Ctrl-C) validates, writes its checkpoint and resumable state, and exits 0. Outside the main
    thread, where signals cannot be caught, the event is never set."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def request(signum: int, frame: object) -> None:
        if requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.set()
        name, steps = signal.Signals(signum).name, CLOCK_EVERY_STEPS
        print(f"{name}: stopping within {steps} steps, then validating (Ctrl-C again interrupts)", flush=True)

    previous = {signum: signal.signal(signum, request) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = recorded_command("training.train", argv)
    with stop_on_signals() as stop:
        run_training(args, command, stop)


def run_training(args: argparse.Namespace, command: str, stop: threading.Event) -> None:
    """The training loop of ``main``; it ends early, cleanly, once ``stop`` is set."""
    rank, world, device = setup_distributed(args.device)
    lead = rank == 0
    run_dir = args.run_dir or Path("runs") / args.out.stem
    if lead:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    batch = args.batch or default_episodes_per_step(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    config = MetaNetConfig(
        variant=args.variant,
        embedding_loss="cross_entropy" if args.shot == 1 else "contrastive",
        max_task_examples=args.task_examples,
        signed_keys=args.signed_keys,
        relative_fast_weights=args.relative_fast_weights,
    )
    model = MetaNet(config).to(device)
    init_metadata = None
    if args.init_from:
        model.load_state_dict(load_file(str(args.init_from)))
        revive_silent_heads(model)
        init_metadata = training_metadata(read_metadata(args.init_from))
    held_out = held_out_alphabets(args.split, args.validation_alphabets, init_metadata)
    compile_mode = args.compile or default_compile(device)
    model.compile_meta_learners(compile_mode)
    model.d_dtype = torch.bfloat16 if args.d_bf16 else None
    model.d_kernel = args.d_kernel
    net: torch.nn.Module = EpisodeModel(model)
    if world > 1:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if args.freeze_keys:
        for name, parameter in model.named_parameters():
            if name.startswith(("rep.", "log_attention_scale")):
                parameter.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=args.lr, fused=device.type == "cuda")
    train_pool = load_split(
        args.split, "train", args.data, rotation_classes=not args.rotation_augment, held_out=held_out
    )
    val_pool = load_split(args.split, "val", args.data, held_out=held_out)
    sampler = DeviceEpisodeSampler(
        train_pool,
        args.way,
        args.shot,
        args.queries,
        batch,
        device,
        seed=args.seed + 1000 * rank,
        code_rows=model.config.max_labels,
        within_alphabet=args.within_alphabet,
        unknown=args.unknown_classes if args.open_set_loss else 0,
    )
    weights = LossWeights(args.attention_loss, args.open_set_loss, args.open_set_cosine)
    open_set_val = bool(args.open_set_loss) or args.select == "auroc"
    val_way = args.val_way or args.way
    per_step = batch * world

    step, best, elapsed_before = 0, -1.0, 0.0
    state_path, metrics_path = run_dir / "last.pt", run_dir / "metrics.csv"
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state.get("validation_alphabets", list(held_out)) != list(held_out):
            raise SystemExit(
                f"{state_path} held out {state['validation_alphabets']}: resume with the same "
                "--validation-alphabets"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.generator.set_state(state["sampler_rng"][rank].to(sampler.generator.get_state().device))
        step, best, elapsed_before = state["step"], state["best"], state["elapsed_s"]
        if lead:
            print(f"resumed at episode {step * per_step} (best validation {args.select} {best:.2f}%)")
    elif lead:  # a fresh run: nothing of an older one in the same folder carries over
        metrics_path.unlink(missing_ok=True)
        clear_snapshots(run_dir)
    log_file = log = None
    if lead:
        new_log = not metrics_path.exists()
        log_file = metrics_path.open("a", newline="")
        log = csv.DictWriter(log_file, fieldnames=METRICS)
        if new_log:
            log.writeheader()

    if lead and args.init_from and step == 0:  # the starting point is the checkpoint to beat
        start = validate(model, val_pool, val_way, args.shot, args.val_tasks, device, open_set_val)
        best = start[args.select]
        print(f"starting validation {args.select} {best:.2f}%: {args.out} is written only when beaten")
    total_steps = math.ceil(args.episodes / per_step)
    val_steps = max(1, args.val_every // per_step)
    session_start, session_step = time.perf_counter(), step
    began = session_start - elapsed_before
    planned_steps = total_steps  # shrinks to what --max-minutes allows, re-estimated at each check
    sums = torch.zeros(3, device=device)  # loss, accuracy, attention accuracy since last validation
    counted = 0
    progress = tqdm(
        total=total_steps * per_step, initial=step * per_step, unit="ep", disable=not lead, smoothing=0.05
    )

    def check_plan() -> bool:
        """Re-plan the run's length from rank 0's clock and share it; True when it is time to stop."""
        nonlocal planned_steps
        plan = torch.tensor([float(total_steps)], device=device if world > 1 else "cpu")
        if args.max_minutes is not None and lead:
            left = 60 * args.max_minutes - (time.perf_counter() - began)
            rate = (step - session_step) / max(time.perf_counter() - session_start, 1e-9)
            plan[0] = min(total_steps, step + max(left, 0.0) * rate) if step > session_step else total_steps
            if left <= 0:
                plan[0] = step
        if stop.is_set() and lead:
            plan[0] = step
        if world > 1:
            dist.broadcast(plan, 0)
        planned_steps = max(int(plan.item()), 1)
        return step >= planned_steps

    plan_steps = min(val_steps, CLOCK_EVERY_STEPS)
    while step < total_steps:
        if step == session_step and check_plan():
            break
        model.train()
        lr = learning_rate(args.lr, step, args.warmup_steps, step / planned_steps, args.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        metrics = train_step(net, optimizer, sampler.sample(), args.clip, weights)
        if lead:  # only rank 0 logs
            sums += torch.stack(metrics)
            counted += 1
        step += 1
        progress.update(per_step)

        last = step == total_steps or (step % plan_steps == 0 and check_plan())
        if (step % val_steps == 0 or last) and lead:
            train_loss, train_accuracy, train_attention = (sums / counted).tolist()
            sums.zero_()
            counted = 0
            val = validate(model, val_pool, val_way, args.shot, args.val_tasks, device, open_set_val)
            elapsed = time.perf_counter() - began
            episodes = step * per_step
            log.writerow(
                {
                    "episode": episodes,
                    "elapsed_s": round(elapsed, 1),
                    "lr": f"{lr:.3g}",
                    "train_loss": round(train_loss, 4),
                    "train_accuracy": round(100 * train_accuracy, 2),
                    "train_attention_accuracy": round(100 * train_attention, 2),
                    "val_accuracy": round(val["accuracy"], 2),
                    "val_ci95": round(val["ci95"], 2),
                    "val_attention_accuracy": round(val["attention_only_accuracy"], 2),
                    "val_auroc": round(val["auroc"], 2) if "auroc" in val else "",
                }
            )
            log_file.flush()
            progress.set_postfix(loss=f"{train_loss:.3f}", val=f"{val['accuracy']:.1f}%")
            if args.snapshots:
                save_snapshot(model, run_dir, episodes)
            if val[args.select] > best:
                best = val[args.select]
                save_checkpoint(
                    model,
                    args.out,
                    {
                        "dataset": "omniglot",
                        "split": args.split,
                        **({"validation_alphabets": list(held_out)} if args.split == "standard" else {}),
                        "train_way": args.way,
                        "train_shot": args.shot,
                        "train_queries": args.queries,
                        "episodes": episodes,
                        "steps": step,
                        "episodes_per_step": per_step,
                        "processes": world,
                        "wall_time_s": round(elapsed, 1),
                        "episodes_per_s": round(episodes / elapsed, 2),
                        "hardware": hardware(device, world),
                        "torch": torch.__version__,
                        "command": command,
                        "seed": args.seed,
                        "recipe": {
                            "lr": args.lr,
                            "schedule": args.schedule,
                            "warmup_steps": args.warmup_steps,
                            "clip": args.clip,
                            "attention_loss": args.attention_loss,
                            "within_alphabet": args.within_alphabet,
                            "open_set_loss": args.open_set_loss,
                            "open_set_cosine": args.open_set_cosine,
                            "unknown_classes": sampler.unknown,
                            "select": args.select,
                            "freeze_keys": args.freeze_keys,
                            "rotations": "augment" if args.rotation_augment else "classes",
                            "compile": compile_mode,
                            "d_dtype": "bfloat16" if args.d_bf16 else "float32",
                            "d_kernel": "fused" if model.d_is_fused(device) else "torch",
                        },
                        "validation": {"way": val_way, "shot": args.shot, "tasks": args.val_tasks} | val,
                        "initialized_from": init_metadata,
                    },
                )
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "sampler_rng": gather_generator_states(sampler.generator, world),
                    "step": step,
                    "best": best,
                    "elapsed_s": elapsed,
                    "validation_alphabets": list(held_out),
                },
                state_path,
            )
            plot_learning_curve(metrics_path, run_dir / "learning_curve.png", title=args.out.stem)
        elif (step % val_steps == 0 or last) and world > 1:
            gather_generator_states(sampler.generator, world)
        if last:
            break
    progress.close()
    if lead:
        log_file.close()
        if stop.is_set():
            print(f"stopped at episode {step * per_step}; --resume continues from {state_path}")
        print(f"best validation {args.select} {best:.2f}% -> {args.out}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def gather_generator_states(generator: torch.Generator, world: int) -> list[torch.Tensor]:
    """Every rank's sampler state (a collective: all ranks call it), for --resume."""
    state = generator.get_state().cpu()
    if world == 1:
        return [state]
    states = [None] * world
    dist.all_gather_object(states, state)
    return states


if __name__ == "__main__":
    main()
