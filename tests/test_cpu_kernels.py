"""The CPU kernels that the numerics tests run on, and the cap that CI's second pass sets.

CI runs the tests marked ``numerics`` twice: with the CPU's own kernels, then with ATen,
oneDNN and MKL capped at AVX2 (as on the many x86-64 CPUs without AVX-512), because the
two pick other kernels whose rounding differs. MKL (matmul, linear layers) has its own cap:
without it the matrix products stay AVX-512 while the convolutions are AVX2.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

AVX2_CAP = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}

# One oneDNN convolution (channels-last takes oneDNN's path for any size) and one MKL
# matrix product, each library saying which instruction set it dispatches to, and ATen's
# own choice.
PROBE = """
import torch
image = torch.randn(2, 16, 32, 32).to(memory_format=torch.channels_last)
conv = torch.nn.Conv2d(16, 16, 3).to(memory_format=torch.channels_last)
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
    conv(image)
matrix = torch.randn(64, 64)
with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
    matrix @ matrix
print("aten:" + torch.backends.cpu.get_cpu_capability(), flush=True)
"""


def kernels_picked(environment: dict[str, str]) -> tuple[str, str, str]:
    """ATen's CPU capability, oneDNN's and MKL's instruction sets under *environment*."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    aten = next(line.removeprefix("aten:") for line in lines if line.startswith("aten:"))
    onednn = next(line.split("isa:", 1)[1] for line in lines if ",info,cpu,isa:" in line)
    mkl = next(line for line in lines if line.startswith("MKL_VERBOSE oneMKL"))
    return aten, onednn, mkl


@pytest.fixture(scope="module")
def capped_kernels() -> tuple[str, str, str]:
    uncapped = {k: v for k, v in os.environ.items() if k not in AVX2_CAP}
    return kernels_picked({**uncapped, **AVX2_CAP})


@pytest.mark.numerics
def test_the_avx2_cap_reaches_aten_and_onednn(capped_kernels):
    aten, onednn, _ = capped_kernels
    assert aten == "AVX2"
    assert onednn.startswith("Intel AVX2") and "512" not in onednn and "AVX10" not in onednn


@pytest.mark.numerics
def test_the_avx2_cap_reaches_mkl(capped_kernels):
    mkl = capped_kernels[2]
    if "AVX" not in mkl:  # on CPUs not made by Intel, MKL's line names no instruction set
        pytest.skip(f"MKL does not say which instruction set it runs: {mkl!r}")
    assert "AVX2" in mkl and "512" not in mkl and "AMX" not in mkl


@pytest.mark.numerics
@pytest.mark.skipif("ATEN_CPU_CAPABILITY" not in os.environ, reason="no CPU cap asked for")
def test_this_run_uses_the_cpu_kernels_its_environment_asks_for():
    asked = os.environ["ATEN_CPU_CAPABILITY"]
    assert torch.backends.cpu.get_cpu_capability().lower() == asked.lower()
