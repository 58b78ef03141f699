"""`metanet-client`: teach a task labeled images and classify images from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._client import Client
from ._errors import MetaNetError
from ._models import ClassifyResult, Prediction
from ._version import __version__

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class UsageError(Exception):
    pass


def _image_files(path: Path) -> list[Path]:
    """`path` itself, or the image files under a folder (recursively, sorted)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if path.is_file():
        return [path]
    raise UsageError(f"no such file or folder: {path}")


def _labeled_files(paths: Sequence[Path], label: str | None) -> list[tuple[str, Path]]:
    """With `label`: every image under `paths`. Without: each path is a folder with one sub-folder
    per label, named after it."""
    if label is not None:
        return [(label, file) for path in paths for file in _image_files(path)]
    examples = []
    for path in paths:
        if not path.is_dir():
            raise UsageError(f"{path} is not a folder: give --label for files, or a folder of label folders")
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            examples += [(folder.name, file) for file in _image_files(folder)]
    if not examples:
        raise UsageError("no images found: expected a folder with one sub-folder of images per label")
    return examples


@contextmanager
def _progress(total: int, unit: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal: tqdm's if installed, else a plain one."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        done = 0

        def update(n: int) -> None:
            nonlocal done
            done += n
            sys.stderr.write(f"\r{done}/{total} {unit} ({100 * done // max(total, 1)}%)")
            sys.stderr.flush()

        yield update
        sys.stderr.write("\n")
    else:
        with tqdm(total=total, unit=unit, file=sys.stderr) as bar:
            yield bar.update


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _count(n: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def cmd_health(client: Client, args: argparse.Namespace) -> None:
    answer = client.health()
    if args.json:
        _print_json(answer)
    else:
        print(f"{client.base_url}: ready")


def cmd_add(client: Client, args: argparse.Namespace) -> None:
    examples = _labeled_files(args.paths, args.label)
    task = client.task(args.task)
    with _progress(len(examples), "images") as update:
        for batch in _batches(examples, client.limits().max_images_per_request):
            result = task.add_examples(batch)
            update(len(batch))
    if args.json:
        _print_json(result.model_dump())
    else:
        print(
            f"added {_count(len(examples), 'image')} to {result.task_id}: version {result.version}, "
            f"{_count(result.num_examples, 'example')}, {_count(len(result.labels), 'label')}"
        )


def cmd_classify(client: Client, args: argparse.Namespace) -> None:
    files = [file for path in args.paths for file in _image_files(path)]
    if not files:
        raise UsageError("no images found")
    task = client.task(args.task)
    predictions: list[Prediction] = []
    with _progress(len(files), "images") as update:
        for batch in _batches(files, client.limits().max_images_per_request):
            result = task.classify(batch, top_k=args.top_k, reject=args.reject == "on")
            predictions += result.predictions
            update(len(batch))
    result = ClassifyResult(
        task_id=result.task_id,
        version=result.version,
        predictions=predictions,
        novelty_threshold=result.novelty_threshold,
    )
    if args.json:
        answer = result.model_dump()
        for file, prediction in zip(files, answer["predictions"], strict=True):
            prediction["file"] = str(file)
        _print_json(answer)
        return
    rows = [["file", "label", "score", "novelty"] + (["top_k"] if args.top_k > 1 else [])]
    for file, p in zip(files, predictions, strict=True):
        top = ", ".join(f"{s.label} {s.score:.3f}" for s in p.top_k)
        novelty = "-" if p.novelty is None else f"{p.novelty:.3f}"
        label = p.label if p.label is not None else "(none of these)"
        rows.append([str(file), label, f"{p.score:.3f}", novelty] + ([top] if args.top_k > 1 else []))
    print(_table(rows))


def cmd_info(client: Client, args: argparse.Namespace) -> None:
    info = client.task(args.task).info()
    if args.json:
        _print_json(info.model_dump())
        return
    print(f"task {info.task_id}: version {info.version}, {info.num_examples} examples")
    if info.labels:
        print(_table([["label", "examples"]] + [[label, str(n)] for label, n in info.labels.items()]))


def cmd_forget(client: Client, args: argparse.Namespace) -> None:
    client.task(args.task).forget(args.label)
    print(f"forgot label {args.label!r} of task {args.task}")


def cmd_export(client: Client, args: argparse.Namespace) -> None:
    export = client.task(args.task).export(args.file)
    examples = len(export.examples)
    print(f"exported task {args.task} (version {export.version}, {examples} examples) to {args.file}")


def cmd_import(client: Client, args: argparse.Namespace) -> None:
    if not args.file.is_file():
        raise UsageError(f"no such file: {args.file}")
    result = client.task(args.task).import_from(args.file)
    if args.json:
        _print_json(result.model_dump())
        return
    print(f"imported {result.num_examples} examples, {len(result.labels)} labels into task {result.task_id}")
    if not result.model_matches:
        print("note: exported under another checkpoint; predictions may differ from the original task's")


def cmd_delete(client: Client, args: argparse.Namespace) -> None:
    client.task(args.task).delete()
    print(f"deleted task {args.task}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metanet-client", description="Client of the MetaNet one-shot concept-learning server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--url", help="server URL (default: $METANET_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default: $METANET_API_KEY)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: 120)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    Run = Callable[[Client, argparse.Namespace], None]

    def command(name: str, run: Run, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    sub = command("health", cmd_health, "check that the server is ready")
    sub.add_argument("--json", action="store_true", help="print the server's JSON answer")

    sub = command("add", cmd_add, "add labeled images to a task")
    sub.add_argument("task", help="task id")
    sub.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH",
        help="a folder with one sub-folder of images per label, or with --label: image files or folders",
    )  # fmt: skip
    sub.add_argument("--label", help="give every image under PATH this label")
    sub.add_argument("--json", action="store_true", help="print the task's state as JSON")

    sub = command("classify", cmd_classify, "classify images against a task's labels")
    sub.add_argument("task", help="task id")
    sub.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders of images")
    sub.add_argument("--top-k", type=int, default=1, help="list the K most likely labels of each image")
    sub.add_argument(
        "--reject",
        choices=["on", "off"],
        default="on",
        help='on: an image unlike every label is "(none of these)"; off: always the most likely label',
    )
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sub = command("info", cmd_info, "show a task's version and labels")
    sub.add_argument("task", help="task id")
    sub.add_argument("--json", action="store_true", help="print JSON")

    sub = command("forget", cmd_forget, "forget one label of a task")
    sub.add_argument("task", help="task id")
    sub.add_argument("label")

    sub = command("export", cmd_export, "save a task (examples, labels, model identity) to a file")
    sub.add_argument("task", help="task id")
    sub.add_argument("file", type=Path, metavar="FILE", help="the export file to write (JSON)")

    sub = command("import", cmd_import, "create a task from an export file (of any server)")
    sub.add_argument("task", help="the new task's id")
    sub.add_argument("file", type=Path, metavar="FILE", help="a file written by export")
    sub.add_argument("--json", action="store_true", help="print the new task's state as JSON")

    sub = command("delete", cmd_delete, "delete a task and everything it stored")
    sub.add_argument("task", help="task id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with Client(args.url, args.api_key, timeout=args.timeout) as client:
            args.run(client, args)
    except UsageError as exc:
        parser.error(str(exc))
    except MetaNetError as exc:
        print(f"metanet-client: error: {exc}", file=sys.stderr)
        return 1
    return 0
