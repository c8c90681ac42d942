"""Work beside the window: the widgets' worker threads and background imports run at a
lower priority than the GUI thread, and hand it the GIL sooner.

On a 2-core machine the training's torch threads take both cores; without this the
window's drawing waited for a core and for the GIL behind the worker's Python (figures:
benchmarks/README.md, "Training in the viewer").
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

# A background thread (and the torch threads it starts) runs this much nicer than the
# window's: whenever the GUI thread has work it gets a core at once, the work the rest.
BACKGROUND_NICE = 10
# Seconds a thread may hold the GIL while another waits for it (Python's default: 5 ms).
# The window's drawing is many short Python calls, each waiting for the GIL behind the
# worker's Python; at the default, that stretched a 60 ms repaint to 0.2-0.3 s.
GIL_SWITCH_INTERVAL = 0.001


@contextlib.contextmanager
def in_the_background() -> Iterator[None]:
    """Run the calling thread below the window: a lower CPU priority for it and
    the torch threads it starts (Linux), and a short GIL switch interval while any such
    block runs (a training and a translation may overlap, and end in either order), for
    as long as the block lasts (the priority where the OS lets it be raised back)."""
    thread = threading.get_native_id()
    nice = None
    if sys.platform.startswith("linux"):
        nice = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(nice + BACKGROUND_NICE, 19))
    _short_switch_interval(True)
    try:
        yield
    finally:
        _short_switch_interval(False)
        if nice is not None:
            with contextlib.suppress(PermissionError):  # unprivileged: stays lower
                os.setpriority(os.PRIO_PROCESS, thread, nice)


_switching = threading.Lock()
_running = 0  # background blocks now running
_interval_before = sys.getswitchinterval()  # the interval to restore when none is


def _short_switch_interval(entering: bool) -> None:
    """Count a background block in or out; the first in shortens the interpreter's GIL
    switch interval to :data:`GIL_SWITCH_INTERVAL`, the last out restores it."""
    global _running, _interval_before
    with _switching:
        if entering and _running == 0:
            _interval_before = sys.getswitchinterval()
            sys.setswitchinterval(min(_interval_before, GIL_SWITCH_INTERVAL))
        _running += 1 if entering else -1
        if not entering and _running == 0:
            sys.setswitchinterval(_interval_before)
