"""The project's CPU kernels (``model/csrc/*.cpp``), built and loaded as one PyTorch extension.

- ``coordinate_lstm.cpp``: d fused into one kernel (ops ``metanet_d::*``, used by ``model/fused_d.py``);
- ``int8_rows.cpp``: the top-k read of a task memory kept as int8 rows (``metanet_rows::gather_sum``,
  used by ``model/compact.py``).

They are compiled on first use by ``torch.utils.cpp_extension`` (a C++ compiler and ninja; about 15
seconds, then cached in ``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) for this
machine's instruction set (``METANET_KERNEL_MARCH``, default ``native``, names another GCC
``-march``: the tests build ``x86-64-v3``, AVX2 without AVX-512, to check the portable paths).
Where they cannot be built, ``available()`` is False (logged once) and the callers run the same
arithmetic as PyTorch operations, as on a GPU.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCES = sorted(Path(__file__).with_name("csrc").glob("*.cpp"))
MARCH = os.environ.get("METANET_KERNEL_MARCH", "native")
CFLAGS = ["-O3", f"-march={MARCH}", "-fopenmp"]  # OpenMP: at::parallel_for spreads work over threads


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


@functools.cache
def available() -> bool:
    """Builds (first call on this machine) and loads the kernels; False if this machine cannot."""
    # -march=native: a cached build is only valid on the same instruction set, so it is part of the name
    parts = [*(s.read_text() for s in SOURCES), " ".join(CFLAGS), torch.__version__, platform.machine()]
    key = "\n".join([*parts, _cpu_flags()])
    name = "metanet_kernels_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    compiler = os.environ.get("CXX") or "c++"  # the one torch.utils.cpp_extension calls
    if shutil.which(compiler.split()[0]) is None:
        logger.warning("the CPU kernels are unavailable (no C++ compiler %r); PyTorch operations run instead",
                       compiler)
        return False
    try:
        from torch.utils.cpp_extension import load

        load(
            name=name,
            sources=[str(s) for s in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as exc:  # no compiler, no ninja, an unsupported platform: PyTorch operations
        logger.warning("the CPU kernels are unavailable (%s); PyTorch operations run instead", exc)
        return False
    return True
