"""Command line: ``python -m server [options]`` and ``metanet serve [options]``; ``metanet backup DEST``
and ``metanet restore SRC`` (server/backup.py)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from pydantic import ValidationError

from server.config import ConfigError, ServerSettings


def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    fields = ServerSettings.model_fields
    # Every option defaults to None: unset options fall through to METANET_* variables, then defaults.
    for name, help_text in [
        ("host", "address to listen on (127.0.0.1 whenever no API keys are configured)"),
        ("port", "port to listen on"),
        ("data_dir", "folder of the default task store (SQLite) and of metrics files"),
        (
            "store",
            "task store URL: sqlite:///path or postgresql://user:pass@host/db (default: SQLite in data dir)",
        ),
        ("checkpoint", "model checkpoint (.safetensors)"),
        ("device", "auto (CUDA when present, else CPU), cpu or cuda"),
        ("backend", "query side: onnxruntime (the ONNX export) or torch"),
        ("workers", "inference worker processes"),
        ("api_servers", "HTTP server processes (default: one per worker)"),
        ("api_keys_file", "file of 'tenant:key' lines; also METANET_API_KEYS='tenant:key,...'"),
        ("cache_bytes", "per-worker task-memory cache budget in bytes"),
        ("topk_min_examples", "tasks with at least this many examples use FAISS top-k attention"),
        ("max_batch_size", "requests per dynamic batch"),
        ("novelty_threshold", "open-set threshold on novelty, 0..2 (default: the checkpoint's calibration)"),
        ("log_level", "critical, error, warning, info or debug"),
    ]:
        default = fields[name].default
        shown = f" [default: {default}]" if default is not None else ""
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=help_text + shown)
    parser.add_argument(
        "--no-normalize-polarity",
        dest="normalize_polarity",
        action="store_false",
        default=None,
        help="keep image polarity as sent (default: invert dark-on-light images)",
    )
    return parser


def serve(argv: list[str] | None = None, prog: str = "python -m server") -> None:
    """Start the server with options from ``argv``, the environment and defaults."""
    parser = _serve_parser(argparse.ArgumentParser(prog=prog, description="MetaNet one-shot concept server"))
    options = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        settings = ServerSettings(**options)
    except ValidationError as exc:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    settings.configure_logging()
    # Prometheus multiprocess mode must be on before prometheus_client is first imported, in this
    # process (the HTTP processes fork from it) and in the spawned workers (they inherit the variable).
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        shutil.rmtree(settings.metrics_dir, ignore_errors=True)
        settings.metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics_dir)
    from server.app import serve as run

    try:
        run(settings)
    except ConfigError as exc:
        parser.error(str(exc))


def _store_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--store", help="task store URL (default: $METANET_STORE, or SQLite in the data dir)")
    parser.add_argument(
        "--data-dir", dest="data_dir", help="the server's data dir (default: $METANET_DATA_DIR or data)"
    )
    return parser


def _settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ServerSettings:
    options = {k: v for k, v in (("store", args.store), ("data_dir", args.data_dir)) if v is not None}
    try:
        return ServerSettings(**options)
    except ValidationError as exc:
        parser.error(str(exc))


def _backup(argv: list[str]) -> None:
    from server.backup import BackupError, backup

    parser = _store_options(
        argparse.ArgumentParser(
            prog="metanet backup",
            description="Copy the task store to DEST while the server runs: a consistent copy as of one "
            "commit (SQLite: its online backup API; PostgreSQL: pg_dump --format=custom).",
        )
    )
    parser.add_argument("dest", type=Path, help="the backup file to write (replaced if it exists)")
    args = parser.parse_args(argv)
    settings = _settings(args, parser)
    try:
        summary = backup(settings.store_url, args.dest)
    except BackupError as exc:
        sys.exit(f"metanet backup: error: {exc}")
    held = "" if summary.tasks is None else f": {summary.tasks} tasks, {summary.examples} examples"
    print(f"backed up to {summary.path} ({summary.bytes} bytes{held}) in {summary.seconds:.2f} s")


def _restore(argv: list[str]) -> None:
    from server.backup import BackupError, restore

    parser = _store_options(
        argparse.ArgumentParser(
            prog="metanet restore",
            description="Replace the task store with the backup SRC (made by metanet backup). Stop the "
            "server (every replica) first; start it again afterwards.",
        )
    )
    parser.add_argument("source", type=Path, metavar="SRC", help="a backup file")
    args = parser.parse_args(argv)
    settings = _settings(args, parser)
    try:
        summary = restore(args.source, settings.store_url, settings.derived_dir)
    except BackupError as exc:
        sys.exit(f"metanet restore: error: {exc}")
    held = "" if summary.tasks is None else f": {summary.tasks} tasks, {summary.examples} examples"
    print(f"restored {summary.path}{held} in {summary.seconds:.2f} s")


def main(argv: list[str] | None = None) -> None:
    """``metanet serve [options]``, ``metanet backup DEST``, ``metanet restore SRC``."""
    parser = argparse.ArgumentParser(prog="metanet", description="MetaNet one-shot concept server")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP server", add_help=False)
    commands.add_parser("backup", help="copy the task store while the server runs", add_help=False)
    commands.add_parser(
        "restore", help="replace the task store with a backup (server stopped)", add_help=False
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        serve(rest, prog="metanet serve")
    elif args.command == "backup":
        _backup(rest)
    else:
        _restore(rest)


if __name__ == "__main__":
    main()
