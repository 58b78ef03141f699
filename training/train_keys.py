r"""Stage 1: train u's memory keys on their own, at the speed of u alone.

    python -m training.train_keys --recipe configs/keys-standard.toml \
        --out runs/keys-standard/keys.safetensors
    python -m training.train_keys --recipe configs/keys-standard.toml --out ... --resume   # continue

Every step is one high-way prototypical episode (Snell et al. 2017) on the training classes
(each rotation of a character a class): ``--way`` classes, one support and ``--queries`` query
drawings each, every drawing randomly shifted, scaled and turned a little (``--augment``). The
support drawings' keys are the memory; each query's logits are the scaled cosines to them, the
served attention without d's task-level fast weights Q*, and the loss is their cross-entropy.
Only u's slow weights Q and the attention's scale learn; the rest of the MetaNet (b, m, d) is
carried unchanged from ``--init-from`` (or freshly initialized), so the output is a full MetaNet
checkpoint that ``python -m training.train --init-from`` continues (stage 2: the meta learners
on top of these keys; ``--freeze-keys`` keeps them as they are).

Validation: nearest-key accuracy on ``--val-tasks`` fixed ``--val-way``-way one-shot tasks of the
held-out classes, every ``--val-every`` steps; the best is written to ``--out``. ``--run-dir``
keeps metrics.csv, the learning curve and a resumable state (last.pt); ``--max-minutes`` spans
sessions (the elapsed time is resumed too). SIGTERM or Ctrl-C stops as cleanly as the clock.
"""

from __future__ import annotations

import argparse
import csv
import math
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from model.checkpoint import read_metadata, save_checkpoint, training_metadata
from model.config import MetaNetConfig
from model.metanet import MetaNet
from training.data import DEFAULT_DATA
from training.devices import default_device
from training.episodes import DeviceEpisodeSampler, held_out_alphabets, load_split
from training.plots import plot_learning_curve
from training.recipe import parse_with_recipe, recorded_command
from training.train import DEFAULT_CLIP, hardware, learning_rate, stop_on_signals

METRICS = ["episode", "images", "elapsed_s", "lr", "train_loss", "train_accuracy", "val_accuracy", "val_ci95"]
KEY_PARAMETERS = ("rep.", "log_attention_scale")  # what this stage trains


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", choices=["vinyals", "standard"], default="standard")
    parser.add_argument("--way", type=int, default=60, help="classes per training episode")
    parser.add_argument("--queries", type=int, default=5, help="query drawings per class")
    parser.add_argument("--augment", type=float, default=1.0, help="strength of the random affine (0: off)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--clip", type=float, default=DEFAULT_CLIP, help="gradient norm clip")
    parser.add_argument("--steps", type=int, default=1_000_000, help="episodes in all (or --max-minutes)")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-time budget, across resumes")
    parser.add_argument("--val-every", type=int, default=500, help="steps between validations")
    parser.add_argument("--val-way", type=int, default=20)
    parser.add_argument("--val-tasks", type=int, default=500)
    parser.add_argument(
        "--validation-alphabets",
        nargs="+",
        default=None,
        help="standard split: held-out background alphabets",
    )
    parser.add_argument("--init-from", type=Path, default=None, help="a MetaNet checkpoint to start from")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the step"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, default=None, help="default: the folder of --out")
    parser.add_argument("--resume", action="store_true")
    return parse_with_recipe(parser, argv)


def augment(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Every image [N, 1, 28, 28] under its own small random affine map: turn up to 10 degrees,
    scale 0.9-1.1, shear up to 0.1, shift up to 2 pixels (each times ``strength``)."""
    if strength <= 0:
        return images
    n = images.shape[0]
    r = (torch.rand(n, 5, generator=generator, device=images.device) * 2 - 1) * strength  # [N, 5] in [-s, s]
    angle, scale, shear = r[:, 0] * math.radians(10), 1 + 0.1 * r[:, 1], 0.1 * r[:, 2]
    shift = r[:, 3:] * (2 * 2 / 28)  # 2 pixels in affine_grid's [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1
    )  # [N, 2, 3]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def key_parameters(model: MetaNet) -> list[torch.nn.Parameter]:
    """What this stage trains: u's slow weights and the attention scale."""
    return [p for name, p in model.named_parameters() if name.startswith(KEY_PARAMETERS)]


def episode_loss(model: MetaNet, support: torch.Tensor, query: torch.Tensor, labels: torch.Tensor):
    """Cross-entropy of the scaled cosines of each query to the support keys (one per class).

    support: [N, 1, 28, 28]; query: [N*L, 1, 28, 28]; labels: [N*L] in 0..N-1."""
    both = model.embed(torch.cat([support, query]), None)  # keys without Q*: [N + N*L, C]
    memory, asked = both[: len(support)], both[len(support) :]
    logits = model.log_attention_scale.exp() * asked @ memory.T  # [N*L, N]
    return F.cross_entropy(logits, labels), (logits.argmax(-1) == labels).float().mean()


def train_step(
    model, optimizer, episode, strength: float, rng: torch.Generator, loss_fn=episode_loss, clip=DEFAULT_CLIP
):
    """One optimizer step on a one-episode batch (``DeviceEpisodeSampler``), its drawings augmented.
    Returns detached (loss, accuracy)."""
    support, query = augment(episode.support[0], strength, rng), augment(episode.query[0], strength, rng)
    loss, accuracy = loss_fn(model, support, query, episode.query_labels[0])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip)
    optimizer.step()
    return loss.detach(), accuracy


@torch.no_grad()
def validate(model: MetaNet, sampler: DeviceEpisodeSampler, tasks: int) -> dict[str, float]:
    """Nearest-key accuracy (mean over tasks and its 95% half-width) on ``tasks`` fixed one-shot tasks."""
    accuracies = []
    for _ in range(math.ceil(tasks / sampler.batch)):
        episode = sampler.sample()
        support, query = model.embed(episode.support, None), model.embed(episode.query, None)  # [E, n|q, C]
        nearest = (query @ support.transpose(1, 2)).argmax(-1)  # [E, q] (one support per label)
        accuracies.append((episode.support_labels.gather(1, nearest) == episode.query_labels).float().mean(1))
    acc = torch.cat(accuracies)[:tasks]
    return {"accuracy": 100 * acc.mean().item(), "ci95": 196 * acc.std().item() / math.sqrt(len(acc))}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = recorded_command("training.train_keys", argv)
    with stop_on_signals() as stop:
        run(args, command, stop)


def run(args: argparse.Namespace, command: str, stop: threading.Event) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(default_device())
    run_dir = args.run_dir or args.out.parent
    run_dir.mkdir(parents=True, exist_ok=True)

    init_metadata = None
    if args.init_from:
        init_metadata = training_metadata(read_metadata(args.init_from))
        model = MetaNet(MetaNetConfig.from_dict(read_metadata(args.init_from)["config"]))
        model.load_state_dict(load_file(str(args.init_from)))
    else:
        model = MetaNet(MetaNetConfig(signed_keys=True, max_task_examples=5))
    held_out = held_out_alphabets(args.split, args.validation_alphabets, init_metadata)
    model.to(device)
    optimizer = torch.optim.Adam(key_parameters(model), lr=args.lr)

    train_pool = load_split(args.split, "train", args.data, held_out=held_out)
    val_pool = load_split(args.split, "val", args.data, held_out=held_out)
    sampler = DeviceEpisodeSampler(
        train_pool, args.way, 1, args.queries, 1, device, args.seed, code_rows=args.way
    )
    augment_rng = torch.Generator(device).manual_seed(args.seed + 1)
    step_loss = torch.compile(episode_loss, dynamic=False) if args.compile else episode_loss

    def val_sampler() -> DeviceEpisodeSampler:  # the same tasks at every validation
        return DeviceEpisodeSampler(
            val_pool, args.val_way, 1, 5, 50, device, seed=1234, code_rows=args.val_way
        )

    step, best, elapsed_before, planned = 0, -1.0, 0.0, args.steps
    state_path, metrics_path = run_dir / "last.pt", run_dir / "metrics.csv"
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.generator.set_state(state["sampler_rng"])
        augment_rng.set_state(state["augment_rng"])
        step, best, elapsed_before = state["step"], state["best"], state["elapsed_s"]
        # the schedule's length until this session's clock re-estimates it (a finished run: anew)
        planned = state["planned"] if state["planned"] > step else args.steps
        print(f"resumed at step {step} (best validation {best:.2f}%)")
    else:
        metrics_path.unlink(missing_ok=True)
    new_log = not metrics_path.exists()
    log_file = metrics_path.open("a", newline="")
    log = csv.DictWriter(log_file, fieldnames=METRICS)
    if new_log:
        log.writeheader()

    images_per_step = args.way * (1 + args.queries)
    session_start, session_step = time.perf_counter(), step
    began = session_start - elapsed_before
    sums, counted = torch.zeros(2), 0
    progress = tqdm(total=args.steps, initial=step, unit="ep", smoothing=0.05)
    if args.max_minutes is not None and elapsed_before >= 60 * args.max_minutes:
        planned = step
    while step < planned:
        model.train()
        lr = learning_rate(args.lr, step, args.warmup_steps, step / planned, "cosine")
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, accuracy = train_step(
            model, optimizer, sampler.sample(), args.augment, augment_rng, step_loss, args.clip
        )
        sums += torch.stack([loss, accuracy])
        counted += 1
        step += 1
        progress.update()

        if step % 10 == 0 and (args.max_minutes is not None or stop.is_set()):
            now = time.perf_counter()
            left = 60 * args.max_minutes - (now - began) if args.max_minutes is not None else math.inf
            rate = (step - session_step) / (now - session_start)
            planned = min(args.steps, step + int(max(left, 0) * rate)) if not stop.is_set() else step
        last = step >= planned
        if step % args.val_every == 0 or last:
            val = validate(model.eval(), val_sampler(), args.val_tasks)
            elapsed = time.perf_counter() - began
            train_loss, train_accuracy = (sums / max(counted, 1)).tolist()
            sums.zero_()
            counted = 0
            log.writerow(
                {
                    "episode": step,
                    "images": step * images_per_step,
                    "elapsed_s": round(elapsed, 1),
                    "lr": f"{lr:.3g}",
                    "train_loss": round(train_loss, 4),
                    "train_accuracy": round(100 * train_accuracy, 2),
                    "val_accuracy": round(val["accuracy"], 2),
                    "val_ci95": round(val["ci95"], 2),
                }
            )
            log_file.flush()
            progress.set_postfix(loss=f"{train_loss:.3f}", val=f"{val['accuracy']:.2f}%")
            if val["accuracy"] > best:
                best = val["accuracy"]
                save_checkpoint(
                    model,
                    args.out,
                    {
                        "dataset": "omniglot",
                        "split": args.split,
                        **({"validation_alphabets": list(held_out)} if args.split == "standard" else {}),
                        "stage": "keys",
                        "episodes": step,
                        "images": step * images_per_step,
                        "wall_time_s": round(elapsed, 1),
                        "images_per_s": round(step * images_per_step / elapsed, 1),
                        "hardware": hardware(device),
                        "torch": torch.__version__,
                        "command": command,
                        "seed": args.seed,
                        "recipe": {
                            "way": args.way,
                            "queries": args.queries,
                            "augment": args.augment,
                            "lr": args.lr,
                            "warmup_steps": args.warmup_steps,
                            "clip": args.clip,
                            "trained": "u (rep.*) and the attention scale; b, m, d as initialized",
                        },
                        "validation": {
                            "way": args.val_way,
                            "shot": 1,
                            "tasks": args.val_tasks,
                            "nearest_key": val,
                        },
                        "initialized_from": init_metadata,
                    },
                )
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "sampler_rng": sampler.generator.get_state(),
                    "augment_rng": augment_rng.get_state(),
                    "step": step,
                    "best": best,
                    "elapsed_s": elapsed,
                    "planned": planned,
                },
                state_path,
            )
            plot_learning_curve(metrics_path, run_dir / "learning_curve.png", title=f"keys: {args.out.stem}")
        if last:
            break
    progress.close()
    log_file.close()
    print(f"best validation (nearest key, {args.val_way}-way) {best:.2f}% -> {args.out}")


if __name__ == "__main__":
    main()
