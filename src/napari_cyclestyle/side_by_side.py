"""Two pieces of torch work side by side on the CPU, each on its own share of the threads.

On a CPU a small network's operations are too short to keep two or more intra-op threads
busy: at ngf 16 and 64-px crops a CycleGAN step runs only 1.3× faster on two threads
than on one. Its two cycles (from A: G, then F; from B: F, then G) are independent until
the optimisers step, so :class:`SideBySide` runs them at once, each on a thread of its
own with half the intra-op threads, which uses the cores fully. The choice of when it
pays is :func:`pays_off`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from torch.utils import _python_dispatch

_First = TypeVar("_First")
_Second = TypeVar("_Second")

# Where the OS does not say (not Linux), a core's L2 cache is taken to be this size.
_ASSUMED_L2_BYTES = 1 << 20
# Side by side pays while the generators' widest convolution weights take at most this
# share of a core's L2 cache (the generators do most of a step's work). Measured on a Zen
# 4 (1 MiB L2): a gain at ngf 16 (144 KiB of weights), mixed at ngf 32 (576 KiB), a loss
# at ngf 64 (2.25 MiB).
_L2_SHARE = 0.25


def l2_cache_bytes() -> int:
    """One core's L2 cache as the OS reports it (Linux), else 1 MiB."""
    folder = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(folder.glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2":
                continue
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if size[-1:] in units and size[:-1].isdigit():
            return int(size[:-1]) * units[size[-1]]
        if size.isdigit():
            return int(size)
    return _ASSUMED_L2_BYTES


def pays_off(generators: list[nn.Module], threads: int) -> bool:
    """Whether running two halves of a step side by side should beat one after the other
    on ``threads`` intra-op threads: with two threads or more, while the widest
    convolution weights of ``generators`` take at most a quarter of a core's L2 cache."""
    if threads < 2:
        return False
    widest = max(
        (
            layer.weight.numel() * layer.weight.element_size()
            for network in generators
            for layer in network.modules()
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))
        ),
        default=0,
    )
    return widest <= _L2_SHARE * l2_cache_bytes()


class SideBySide:
    """Two worker threads that run torch work at once, each on half of ``threads``
    intra-op threads (the first gets the odd one).

    Parameters
    ----------
    threads : int
        The intra-op threads to share (at least 2).

    Notes
    -----
    torch keeps the intra-op thread count per thread, but a thread takes its count from a
    process-wide value the first time it runs an operation, and setting it sets that
    value. So each worker sets its own share and runs an operation while the caller
    waits, then the caller puts the process-wide value back.
    """

    def __init__(self, threads: int) -> None:
        shares = (threads - threads // 2, threads // 2)
        ready = threading.Barrier(3)
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix="cyclestyle-half")]
        self._threads.append(ThreadPoolExecutor(1, thread_name_prefix="cyclestyle-half"))

        def take(share: int) -> None:
            torch.set_num_threads(share)
            torch.get_num_threads()  # the count is taken now, from `share`
            ready.wait()

        pairs = zip(self._threads, shares, strict=True)
        started = [pool.submit(take, share) for pool, share in pairs]
        try:
            ready.wait()
        finally:
            torch.set_num_threads(threads)
        for future in started:
            future.result()
        weakref.finalize(self, _shut_down, self._threads)

    def run(
        self, first: Callable[[], _First], second: Callable[[], _Second]
    ) -> tuple[_First, _Second]:
        """``first()`` and ``second()``, run at once on the two workers; an error of
        either is raised here (the first's, if both fail), after both have ended.

        While a torch dispatch mode is active in the calling thread (a
        ``FlopCounterMode``, a debug mode), the two run one after the other in the
        calling thread instead: such modes belong to one thread and would not see the
        workers' operations."""
        if _python_dispatch._get_current_dispatch_mode() is not None:
            return first(), second()
        futures = (self._threads[0].submit(first), self._threads[1].submit(second))
        for future in futures:
            future.exception()  # wait for both before raising either's error
        return futures[0].result(), futures[1].result()


def _shut_down(pools: list[ThreadPoolExecutor]) -> None:
    for pool in pools:
        pool.shutdown(wait=False)
