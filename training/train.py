"""Train MetaNet on Omniglot episodes.

    python -m training.train --split vinyals --way 20 --episodes 20000 \
        --out checkpoints/omniglot-vinyals.safetensors

One episode per Adam step (lr 1e-3, gradient norm clipped at 10), as in the original code.
Every ``--val-every`` episodes the model is evaluated on held-out validation classes and the
best one is written to ``--out`` (safetensors + JSON metadata). ``--run-dir`` holds the metrics
log (metrics.csv), a resumable state (last.pt) and the learning-curve plot; ``--resume``
continues from it. ``--max-minutes`` bounds the wall time.
"""

from __future__ import annotations

import argparse
import csv
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from model.checkpoint import read_metadata, save_checkpoint
from model.config import MetaNetConfig
from model.fast_weights import init_quiet
from model.metanet import MetaNet
from training.episodes import EpisodeSampler, load_split
from training.evaluate import default_device, summarize, task_accuracies
from training.plots import plot_learning_curve

METRICS = ["episode", "elapsed_s", "train_loss", "train_accuracy", "val_accuracy", "val_ci95"]


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def validate(model: MetaNet, pool, way: int, shot: int, tasks: int, device: torch.device) -> dict[str, float]:
    """Accuracy on validation tasks (always the same tasks: fixed seed, 5 queries per class)."""
    return summarize(task_accuracies(model, pool, way, shot, 5, tasks, seed=1234, device=device))


def revive_silent_heads(model: MetaNet) -> None:
    """Give generator heads that are exactly zero a quiet random start (see model/fast_weights.py)."""
    heads = [model.m_conv.net[-1], model.m_fc.net[-1]] + [d.head for d in (model.d_rep, model.d_base) if d]
    for head in heads:
        if not head.weight.detach().any():
            init_quiet(head)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=["vinyals", "standard"], default="vinyals")
    parser.add_argument("--variant", choices=["metanet", "minus", "plus"], default="metanet")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--queries", type=int, default=10, help="query images per class in each episode")
    parser.add_argument("--episodes", type=int, default=20_000)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall time")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=10.0)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--val-tasks", type=int, default=200)
    parser.add_argument("--val-way", type=int, default=None, help="default: --way")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--out", type=Path, required=True, help="best checkpoint (.safetensors)")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/<checkpoint name>")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from a checkpoint's weights (fast-weight heads stuck at exactly zero are re-initialized)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = "python -m training.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    run_dir = args.run_dir or Path("runs") / args.out.stem
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    embedding_loss = "cross_entropy" if args.shot == 1 else "contrastive"
    model = MetaNet(MetaNetConfig(variant=args.variant, embedding_loss=embedding_loss)).to(device)
    init_metadata = None
    if args.init_from:
        model.load_state_dict(load_file(str(args.init_from)))
        revive_silent_heads(model)
        init_metadata = {
            k: v for k, v in read_metadata(args.init_from).items() if k not in ("config", "test")
        }
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_pool, val_pool = load_split(args.split, "train"), load_split(args.split, "val")
    sampler = EpisodeSampler(
        train_pool, args.way, args.shot, args.queries, args.seed, code_rows=model.config.max_labels
    )
    val_way = args.val_way or args.way

    start, best, elapsed_before = 0, -1.0, 0.0
    state_path, metrics_path = run_dir / "last.pt", run_dir / "metrics.csv"
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        start, best, elapsed_before = state["episode"], state["best"], state["elapsed_s"]
        print(f"resumed at episode {start} (best validation accuracy {best:.2f}%)")
    elif metrics_path.exists():
        metrics_path.unlink()
    new_log = not metrics_path.exists()
    log_file = metrics_path.open("a", newline="")
    log = csv.DictWriter(log_file, fieldnames=METRICS)
    if new_log:
        log.writeheader()

    if args.init_from and start == 0:  # the starting point is the checkpoint to beat
        best = validate(model, val_pool, val_way, args.shot, args.val_tasks, device)["accuracy"]
        print(f"starting validation accuracy {best:.2f}%: {args.out} is written only when beaten")
    began = time.perf_counter() - elapsed_before
    losses, hits = [], []
    progress = tqdm(range(start, args.episodes), initial=start, total=args.episodes, unit="ep")

    def out_of_time() -> bool:
        return args.max_minutes is not None and time.perf_counter() - began > 60 * args.max_minutes

    for episode_index in progress:
        if out_of_time():
            break
        model.train()
        episode = sampler.sample().to(device)
        logits = model(episode.support, episode.support_labels, episode.query, episode.label_codes)
        loss = F.cross_entropy(logits, episode.query_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        losses.append(loss.detach())
        hits.append((logits.argmax(-1) == episode.query_labels).float().mean().detach())

        done = episode_index + 1
        if done % args.val_every == 0 or done == args.episodes or out_of_time():
            train_loss = torch.stack(losses).mean().item()
            train_accuracy = 100 * torch.stack(hits).mean().item()
            losses, hits = [], []
            val = validate(model, val_pool, val_way, args.shot, args.val_tasks, device)
            elapsed = time.perf_counter() - began
            log.writerow(
                {
                    "episode": done,
                    "elapsed_s": round(elapsed, 1),
                    "train_loss": round(train_loss, 4),
                    "train_accuracy": round(train_accuracy, 2),
                    "val_accuracy": round(val["accuracy"], 2),
                    "val_ci95": round(val["ci95"], 2),
                }
            )
            log_file.flush()
            progress.set_postfix(loss=f"{train_loss:.3f}", val=f"{val['accuracy']:.1f}%")
            if val["accuracy"] > best:
                best = val["accuracy"]
                save_checkpoint(
                    model,
                    args.out,
                    {
                        "dataset": "omniglot",
                        "split": args.split,
                        "train_way": args.way,
                        "train_shot": args.shot,
                        "train_queries": args.queries,
                        "episodes": done,
                        "wall_time_s": round(elapsed, 1),
                        "episodes_per_s": round(done / elapsed, 2),
                        "hardware": hardware(device),
                        "torch": torch.__version__,
                        "command": command,
                        "seed": args.seed,
                        "validation": {"way": val_way, "shot": args.shot, "tasks": args.val_tasks} | val,
                        "initialized_from": init_metadata,
                    },
                )
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "sampler_rng": sampler.rng.bit_generator.state,
                    "episode": done,
                    "best": best,
                    "elapsed_s": elapsed,
                },
                state_path,
            )
            plot_learning_curve(metrics_path, run_dir / "learning_curve.png", title=args.out.stem)
    log_file.close()
    print(f"best validation accuracy {best:.2f}% -> {args.out}")


if __name__ == "__main__":
    main()
