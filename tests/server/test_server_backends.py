"""The two query backends (torch, onnxruntime) give the same answers over HTTP; key search on any device."""

from __future__ import annotations

import httpx
import pytest
import torch

from server.neighbors import FaissKeyIndex, TorchKeyIndex, key_index
from testkit import b64, omniglot, running_server, support_body


def _keys(n: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(n, 64, generator=torch.Generator().manual_seed(seed)), dim=1
    )


def test_faiss_and_torch_top_k_find_the_same_neighbours() -> None:
    keys, queries = _keys(300, 0), _keys(7, 1)
    faiss_ids, faiss_sims = FaissKeyIndex(keys).search(queries, 16)
    torch_ids, torch_sims = TorchKeyIndex(keys).search(queries, 16)
    assert torch.equal(faiss_ids, torch_ids)
    torch.testing.assert_close(faiss_sims, torch_sims)
    assert key_index(keys).search(queries, 500)[0].shape == (7, 300)  # k capped at the task size


def _answers(url: str, task: str, characters: list[list[bytes]], reject: str = "on") -> list[dict]:
    labels = [f"c{i}" for i in range(len(characters))]
    with httpx.Client(base_url=url, timeout=60) as http:
        body = support_body([(label, c[0]) for label, c in zip(labels, characters, strict=True)])
        assert http.post(f"/tasks/{task}/support", json=body).status_code == 200
        queries = {"images": [b64(c[1]) for c in characters], "reject": reject}
        answer = http.post(f"/tasks/{task}/classify", json=queries)
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"]


def _assert_same_answers(expected: list[dict], got: list[dict]) -> None:
    assert [p["label"] for p in expected] == [p["label"] for p in got]
    assert max(abs(e["score"] - g["score"]) for e, g in zip(expected, got, strict=True)) < 1e-5


def test_onnxruntime_and_torch_servers_answer_alike(server, tmp_path, tibetan) -> None:
    large = omniglot(None, 40, 2)  # 40 labels: top-k attention
    with running_server(tmp_path / "data", "--backend", "torch") as torch_server:
        for task, characters in (("dense", tibetan), ("topk", large)):
            _assert_same_answers(
                _answers(torch_server.url, task, characters), _answers(server.url, task, characters)
            )
    assert "(onnxruntime)" in server.log() and "(torch)" in torch_server.log()


@pytest.mark.gpu
def test_the_server_answers_on_the_gpu(tmp_path, tibetan) -> None:
    for backend in ("torch", "onnxruntime"):
        with running_server(tmp_path / backend, "--device", "cuda", "--backend", backend) as gpu:
            predictions = _answers(gpu.url, "gpu", tibetan, reject="off")  # closed-set accuracy
            accuracy = sum(p["label"] == f"c{i}" for i, p in enumerate(predictions)) / len(predictions)
            assert accuracy >= 0.6
            assert "on cuda" in gpu.log()


@pytest.mark.gpu
def test_key_search_stays_on_the_gpu() -> None:
    keys = _keys(300, 0).cuda()
    ids, sims = key_index(keys).search(_keys(7, 1).cuda(), 16)
    assert ids.is_cuda and sims.is_cuda
    assert torch.equal(ids.cpu(), TorchKeyIndex(keys.cpu()).search(_keys(7, 1), 16)[0])
