"""Who runs the tiles of a pass: this process, or the workers of a dask cluster."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol


class Tasks(Protocol):
    """Runs ``task(item)`` for the tiles of a pass and yields the results in order.

    ``shared`` says whether the tasks run in other processes, which then read and write
    stored activations as files in a folder they all reach.
    """

    shared: bool

    def map(self, task: Callable, items: list, prefetch: Callable | None = None) -> Iterator:
        """``task(item)`` for each item, yielded in order; stopping the iteration stops
        the work. ``prefetch(next item)``, if given, may start loading its data."""
        ...


class LocalTasks:
    """Runs the tiles of a pass one after another, in this process."""

    shared = False

    def map(self, task: Callable, items: list, prefetch: Callable | None = None) -> Iterator:
        """``task(item)`` for each item, in order, each computed when it is taken; before
        each, ``prefetch(next item)`` if given, so that its data loads meanwhile."""
        for item, following in zip(items, [*items[1:], None], strict=True):
            if prefetch is not None and following is not None:
                prefetch(following)
            yield task(item)


class DaskTasks:
    """Spreads the tiles of a pass over the workers of a ``dask.distributed`` client.

    The task is sent to the cluster once per pass; results come back in order, and
    stopping the iteration cancels the tiles not yet done. Items are first placed on
    the workers in turn (the scheduler may move them): left to itself, it could run a
    few short tasks all on the worker that asked first.
    """

    shared = True

    def __init__(self, client) -> None:
        self.client = client

    def map(self, task: Callable, items: list, prefetch: Callable | None = None) -> Iterator:
        """``task(item)`` for each item, run on the workers, yielded in order (each worker
        reads its own data: ``prefetch`` is not used)."""
        # On every worker, so that where the task lies does not draw all tiles to one.
        shared = self.client.scatter(task, hash=False, broadcast=True)
        workers = list(self.client.nthreads())
        futures = [
            self.client.submit(
                _call,
                shared,
                item,
                pure=False,
                workers=workers[index % len(workers)] if workers else None,
                allow_other_workers=bool(workers),
            )
            for index, item in enumerate(items)
        ]
        try:
            for future in futures:
                yield future.result()
        finally:
            self.client.cancel([*futures, shared])


def _call(task: Callable, item):
    return task(item)
