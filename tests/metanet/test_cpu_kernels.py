"""The CPU kernels' build (model/cpu_kernels.py) and the int8 memory read (model/csrc/int8_rows.cpp,
dense and top-k) against the same read as PyTorch operations. d's kernel has its own tests
(test_fused_d.py)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import compact, cpu_kernels
from model.compact import FastWeightRows, RowLayout

needs_kernels = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernels")

# Row lengths that are not multiples of a vector (9, 577, 1), a layer of no rows, and the default
# network's 576 (a 64-channel 3x3 kernel)
LAYOUT = RowLayout(((5, 9), (3, 577), (0, 40), (4, 576), (2, 1)))


def pytorch_read(rows: FastWeightRows, weights: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compact, "_int8_kernel_applies", lambda weights: False)
        return rows.read(weights, ids)


def int8_rows(n: int, seed: int = 0) -> FastWeightRows:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, LAYOUT.num_coordinates, generator=g) * torch.logspace(-3, 1, n).unsqueeze(1)
    return FastWeightRows.from_dense(dense, LAYOUT, "int8")


@needs_kernels
@pytest.mark.parametrize("queries,k", [(1, 1), (3, 16), (7, 5), (2, 32)])
def test_int8_topk_read_equals_pytorch(queries: int, k: int) -> None:
    rows = int8_rows(20)
    g = torch.Generator().manual_seed(queries + k)
    ids = torch.randint(0, 20, (queries, k), generator=g)
    ids[:, -1] = ids[:, 0]  # a row read twice by one query
    weights = torch.softmax(torch.randn(queries, k, generator=g), -1)
    assert compact._int8_kernel_applies(weights)
    got = rows.read(weights, ids)
    assert got.shape == (queries, LAYOUT.num_coordinates) and got.dtype == torch.float32
    torch.testing.assert_close(got, pytorch_read(rows, weights, ids), atol=1e-6, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("queries", [1, 5])
def test_int8_dense_read_equals_pytorch(queries: int) -> None:
    rows = int8_rows(7)
    weights = torch.softmax(torch.randn(queries, 7, generator=torch.Generator().manual_seed(queries)), -1)
    got = rows.read(weights)
    assert got.shape == (queries, LAYOUT.num_coordinates)
    torch.testing.assert_close(got, pytorch_read(rows, weights, None), atol=1e-6, rtol=1e-5)


@needs_kernels
def test_int8_topk_read_reads_only_this_version_s_rows() -> None:
    """A version shares its buffer with the versions grown from it: its reads see its own rows, and
    an id past them (a row another version appended) is an error, not a read of that row."""
    rows = int8_rows(6)
    grown = rows.appended(torch.randn(3, LAYOUT.num_coordinates))
    ids, weights = torch.tensor([[0, 5, 2]]), torch.tensor([[0.5, 0.3, 0.2]])
    torch.testing.assert_close(grown.read(weights, ids), rows.read(weights, ids))
    with pytest.raises(RuntimeError, match="outside"):
        rows.read(weights, torch.tensor([[0, 1, 7]]))


def test_the_kernel_runs_only_where_it_applies() -> None:
    cpu = torch.rand(2, 3)
    assert not compact._int8_kernel_applies(cpu.double())
    assert not compact._int8_kernel_applies(cpu.bfloat16())
    assert not compact._int8_kernel_applies(cpu.requires_grad_())
    with torch.no_grad():
        assert compact._int8_kernel_applies(cpu) == cpu_kernels.available()


@needs_kernels
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 instruction sets")
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])
def test_builds_for_other_instruction_sets_equal_pytorch_too(march: str) -> None:
    """CPUs without AVX-512 get the portable paths (d's exp and 8-coordinate blocks; the int8 read's
    AVX2 vectors, or its scalar loop without AVX2): the same checks on builds for AVX2
    (x86-64-v3) and for the x86-64 baseline, each in a process of its own (one build per process)."""
    check = (
        "import torch; from model import cpu_kernels; "
        "from tests.metanet import test_fused_d as d, test_cpu_kernels as rows; "
        "assert cpu_kernels.available() and torch.ops.metanet_d.lanes() == 8; "
        "[d.test_kernel_equals_pytorch_d_forward_and_gradients(lead, 5, s) for lead in [(), (2,)] "
        "for s in (False, True)]; d.test_kernel_survives_saturated_gates(); "
        "[rows.test_int8_topk_read_equals_pytorch(q, k) for q, k in [(1, 1), (3, 16)]]; "
        "rows.test_int8_dense_read_equals_pytorch(5)"
    )
    env = {**os.environ, "METANET_KERNEL_MARCH": march}
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", check], env=env, cwd=root, check=True, timeout=300)


@needs_kernels
def test_small_tasks_keep_int8_rows_where_the_kernel_reads_them() -> None:
    """The server's default small tier ("auto") is int8 on a CPU with the kernel, float32 on a GPU;
    a storage set explicitly is kept."""
    from server.config import ServerSettings

    assert compact.fastest_small_storage("cpu") == "int8"
    assert compact.fastest_small_storage("cuda:0") == "float32"
    assert ServerSettings().storage_policy("cpu").small == "int8"
    assert ServerSettings().storage_policy("cuda:0").small == "float32"
    assert ServerSettings(small_memory_storage="float32").storage_policy("cpu").small == "float32"
