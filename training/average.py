r"""Average the weights of a training run's snapshots: stochastic weight averaging (Izmailov et al.,
UAI 2018) over the points at which the run was validated.

    python -m training.train ... --snapshots --run-dir runs/x --out runs/x/best.safetensors
    python -m training.average --like runs/x/best.safetensors --run-dir runs/x --last 4 \
        --out runs/x/average.safetensors

With ``--snapshots`` a run writes its weights at every validation to ``<run-dir>/snapshots/``. The
model has no batch-norm statistics, so the mean of those weights is the whole averaged model. The
average is validated on the tasks the run validates on (``training.validation.validate``: same split,
held-out alphabets, way and task count, read from ``--like``'s metadata) and written with
``--like``'s metadata, its ``validation`` replaced and the snapshots it averages recorded under
``weight_average``. Both validations are printed; with ``--if-better`` the average is written only
when it beats ``--like`` on the figure the run selects by (``recipe.select``), e.g. in place of it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from model.checkpoint import read_metadata, save_checkpoint, training_metadata
from model.config import MetaNetConfig
from model.metanet import MetaNet
from training.data import DEFAULT_DATA
from training.devices import default_compile, default_device
from training.episodes import load_split, validation_alphabets
from training.recipe import recorded_command
from training.snapshots import run_snapshots, snapshot_episodes
from training.validation import validate


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The elementwise mean of each floating-point tensor (other tensors from the last state)."""
    if not states:
        raise ValueError("nothing to average")
    return {
        name: torch.stack([s[name] for s in states]).mean(0) if last.is_floating_point() else last
        for name, last in states[-1].items()
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--like", type=Path, required=True, help="the run's checkpoint (its metadata)")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: the folder of --like")
    parser.add_argument("--last", type=int, default=None, help="average the last N snapshots (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--if-better",
        action="store_true",
        help="write --out only when the average beats --like on the run's selection figure",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--device", default=default_device())
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = recorded_command("training.average", argv)
    run_dir = args.run_dir or args.like.parent
    paths = run_snapshots(run_dir)
    paths = paths[-args.last :] if args.last else paths
    if not paths:
        raise SystemExit(f"no snapshots in {run_dir / 'snapshots'} (train with --snapshots)")
    metadata = read_metadata(args.like)
    model = MetaNet(MetaNetConfig.from_dict(metadata["config"]))
    model.load_state_dict(average_states([load_file(str(p)) for p in paths]))
    device = torch.device(args.device)
    model.to(device).compile_meta_learners(default_compile(device))

    held_out = validation_alphabets(metadata)
    pool = load_split(metadata["split"], "val", args.data, held_out=held_out)
    before = metadata["validation"]
    open_set = "auroc" in before
    val = validate(model, pool, before["way"], before["shot"], before["tasks"], device, open_set)
    episodes = [snapshot_episodes(p) for p in paths]
    for name, figures in (("--like", before), (f"average of {len(paths)} snapshots", val)):
        auroc = f", AUROC {figures['auroc']:.2f}" if open_set else ""
        print(f"{name}: validation accuracy {figures['accuracy']:.2f}{auroc}")
    select = metadata.get("recipe", {}).get("select", "accuracy")
    if args.if_better and val[select] <= before[select]:
        print(f"the average does not beat --like on validation {select}: {args.out} not written")
        return
    save_checkpoint(
        model,
        args.out,
        training_metadata(metadata)
        | {
            "episodes": episodes[-1],
            "validation": {k: before[k] for k in ("way", "shot", "tasks")} | val,
            "weight_average": {"episodes": episodes, "command": command, "like_validation": before},
        },
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
