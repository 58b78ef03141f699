"""`metanet-client` against a real server process: a folder round trip, table and JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from metanet_client.cli import main

from testkit import REPO


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folders(tmp_path: Path, drawings: list[list[bytes]]) -> tuple[Path, Path, list[str]]:
    """support/<label>/0.png (one drawing of each of 5 characters), queries/*.png (the taught
    drawings again, then other people's)."""
    labels = [f"char-{i}" for i in range(5)]
    support, queries = tmp_path / "support", tmp_path / "queries"
    for i, label in enumerate(labels):
        (support / label).mkdir(parents=True)
        (support / label / "0.png").write_bytes(drawings[i][0])
    queries.mkdir()
    for i in range(5):
        (queries / f"a{i}-taught.png").write_bytes(drawings[i][0])
        (queries / f"b{i}-other.png").write_bytes(drawings[i][7])
    (queries / "notes.txt").write_text("not an image: skipped")
    return support, queries, labels


def test_folder_round_trip(
    capsys: pytest.CaptureFixture[str], server_url: str, task_id: str, folders: tuple[Path, Path, list[str]]
) -> None:
    support, queries, labels = folders
    url = ["--url", server_url]
    code, out, _ = run(capsys, *url, "add", task_id, str(support))
    assert code == 0 and out.startswith(f"added 5 images to {task_id}:") and "5 labels" in out

    code, out, _ = run(capsys, *url, "classify", task_id, str(queries), "--json", "--reject", "off")
    answer = json.loads(out)
    assert code == 0 and answer["task_id"] == task_id
    files = sorted(str(path) for path in queries.glob("*.png"))
    assert [p["file"] for p in answer["predictions"]] == files
    assert [p["label"] for p in answer["predictions"][:5]] == labels  # the taught drawings themselves
    assert all(p["label"] in labels and len(p["top_k"]) == 1 for p in answer["predictions"])
    assert all(p["novelty"] < 1e-3 and p["known"] for p in answer["predictions"][:5])

    code, out, _ = run(capsys, *url, "classify", task_id, str(queries / "a0-taught.png"), "--top-k", "3")
    header, row = out.splitlines()
    assert code == 0 and header.split() == ["file", "label", "score", "novelty", "top_k"]
    assert row.split()[:2] == [str(queries / "a0-taught.png"), "char-0"] and row.count("char-") == 4

    code, out, _ = run(capsys, *url, "add", task_id, "--label", "extra", str(queries / "b1-other.png"))
    assert code == 0 and out.startswith(f"added 1 image to {task_id}:") and "6 labels" in out
    code, out, _ = run(capsys, *url, "info", task_id, "--json")
    info = json.loads(out)
    assert info["num_examples"] == 6 and info["labels"] == {**dict.fromkeys(labels, 1), "extra": 1}

    code, out, _ = run(capsys, *url, "forget", task_id, "extra")
    assert code == 0 and "extra" in out
    code, out, _ = run(capsys, *url, "info", task_id)
    assert code == 0 and out.splitlines()[0].startswith(f"task {task_id}: version ")
    assert "5 examples" in out and "extra" not in out and "char-4  1" in out

    code, out, _ = run(capsys, *url, "delete", task_id)
    assert code == 0 and out.strip() == f"deleted task {task_id}"
    code, out, err = run(capsys, *url, "info", task_id)
    assert code == 1 and out == "" and "404" in err


def test_usage_errors(
    capsys: pytest.CaptureFixture[str], server_url: str, folders: tuple[Path, Path, list[str]]
) -> None:
    _, queries, _ = folders
    for args in (
        ["add", "t", str(queries / "a0-taught.png")],  # files need --label
        ["add", "t", str(queries)],  # no label sub-folders
        ["classify", "t", str(queries / "missing.png")],
    ):
        with pytest.raises(SystemExit) as raised:
            main(["--url", server_url, *args])
        assert raised.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_console_entry_point_and_environment(
    auth_server_url: str, api_keys: dict[str, str], task_id: str, folders: tuple[Path, Path, list[str]]
) -> None:
    support, _, _ = folders
    env = {**os.environ, "PYTHONPATH": str(REPO / "clients/python/src"), "METANET_URL": auth_server_url}
    command = [sys.executable, "-m", "metanet_client"]

    def cli(*args: str, key: str | None) -> subprocess.CompletedProcess[str]:
        environment = env | ({"METANET_API_KEY": key} if key else {})
        return subprocess.run([*command, *args], env=environment, cwd=REPO, capture_output=True, text=True)

    denied = cli("add", task_id, str(support), key=None)
    assert denied.returncode == 1 and "401" in denied.stderr
    added = cli("add", task_id, str(support), "--json", key=api_keys["alice"])
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["num_examples"] == 5
    assert added.stderr == ""  # no progress bar when stderr is not a terminal
    health = cli("health", key=api_keys["alice"])
    assert health.returncode == 0 and "ready" in health.stdout


def test_export_and_import(
    capsys: pytest.CaptureFixture[str], server_url: str, task_id: str, folders: tuple[Path, Path, list[str]],
    tmp_path: Path,
) -> None:  # fmt: skip
    support, _, _ = folders
    url = ["--url", server_url]
    assert run(capsys, *url, "add", task_id, str(support))[0] == 0
    file = tmp_path / "export.json"
    code, out, _ = run(capsys, *url, "export", task_id, str(file))
    assert code == 0 and out.strip() == f"exported task {task_id} (version 1, 5 examples) to {file}"
    assert json.loads(file.read_text())["task_id"] == task_id

    code, out, _ = run(capsys, *url, "import", f"{task_id}-copy", str(file), "--json")
    assert code == 0 and json.loads(out)["num_examples"] == 5
    code, _, err = run(capsys, *url, "import", f"{task_id}-copy", str(file))
    assert code == 1 and "409 task_exists" in err
