"""Data-parallel training under ``torchrun``: process group, ranks and collectives.

When ``torchrun`` starts the training (it sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``
and the rendezvous variables), the trainer wraps its networks in
``DistributedDataParallel`` and uses these helpers; in a plain process they all reduce
to no-ops, so one code path serves both.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributed, nn

from .devices import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and logs."""
        return self.rank == 0


def setup(device: str) -> tuple[DistributedContext, torch.device]:
    """Join the process group ``torchrun`` describes (if any) and pick this rank's device.

    CUDA runs use NCCL with one GPU per local rank; CPU runs use gloo.

    Parameters
    ----------
    device : str
        The configured device (``auto``, ``cpu``, ``cuda``, ``mps``).

    Returns
    -------
    (DistributedContext, torch.device)
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    torch_device = resolve_device(device)
    if world_size <= 1:
        return DistributedContext(), torch_device
    context = DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if torch_device.type == "cuda":
        torch_device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(torch_device)
    elif torch_device.type == "mps":
        raise ValueError("Distributed training is not supported on Apple MPS; use cpu or cuda.")
    if not distributed.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        # A process group left to interpreter teardown can abort the process ("terminate
        # called without an active exception"); the group we open we also close.
        atexit.register(_destroy_process_group)
        distributed.init_process_group(
            backend, device_id=torch_device if backend == "nccl" else None
        )
    return context, torch_device


def _destroy_process_group() -> None:
    if distributed.is_initialized():
        distributed.destroy_process_group()


def wrap(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` in a distributed run, else ``module`` itself."""
    if not context.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def all_gather(value: Any, context: DistributedContext) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` when not distributed."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    distributed.all_gather_object(gathered, value)
    return gathered


def mean_over_ranks(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Average a tensor over all ranks (in place where distributed)."""
    if context.enabled:
        distributed.all_reduce(tensor)
        tensor /= context.world_size
    return tensor


def any_rank(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (so all ranks stop together)."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    distributed.all_reduce(value, op=distributed.ReduceOp.MAX)
    return bool(value.item())


def barrier(context: DistributedContext) -> None:
    """Wait for all ranks."""
    if context.enabled:
        distributed.barrier()
