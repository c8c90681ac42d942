"""Compiled networks stay right when processes with other CPU kernels share a cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

# A small ResNet generator with resize up-sampling (where inductor fuses the last
# block's norm into the up-sampling), compiled through the trainer's wrapper; prints how
# far the compiled output is from the eager one.
_COMPILE_AND_COMPARE = """
import torch
from napari_cyclestyle.networks import build_generator
from napari_cyclestyle.training_networks import CompiledOrEager

torch.manual_seed(0)
network = build_generator("resnet_6blocks", 1, 1, ngf=16, upsampling="resize").eval()
batch = torch.rand(2, 1, 64, 64)
with torch.no_grad():
    eager = network(batch)
    compiled = CompiledOrEager(network, "G")(batch)
print((compiled - eager).abs().max().item())
"""


def _compiled_error(cache: str, **capped: str) -> float:
    environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, **capped}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_AND_COMPARE],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    return float(done.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != "AVX512",
    reason="needs a CPU with AVX-512, whose kernels can then be capped at AVX2",
)
def test_a_process_capped_at_avx2_does_not_reuse_avx512_kernels(tmp_path):
    # Inductor used to key its cache without the vector width: the capped process
    # compiled the AVX-512 code with AVX2 vectors, read past its buffers and crashed.
    cache = str(tmp_path / "inductor")
    assert _compiled_error(cache) < 1e-4
    assert _compiled_error(cache, ATEN_CPU_CAPABILITY="avx2") < 1e-4
