"""Writing files atomically: readers see the old file or the new one, never half of one.

Model files, checkpoints and saved configurations are all written through
:func:`atomic_write_bytes`. Torch-free.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import stat
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Readers see the old file or the new one, never a half-written one; on failure
    (disk full, interruption) the old file is left as it was. The temporary file
    (``.<name>.<pid>.<random>.tmp`` beside ``path``) is flushed to disk before the
    rename, and the folder after it. Temporary files of earlier writers of ``path``
    that were killed mid-write are removed first. The file gets the permissions of the
    file it replaces, or those the user's umask gives a new file (not the temporary
    file's private ``0600``), so that a model saved in a shared folder stays shared.

    Raises
    ------
    OSError
        If the data cannot be written; the message names the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        if os.name == "posix":
            os.fchmod(handle, _mode_for(path))
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OSError(error.errno, f"Could not write {path}: {error.strerror}") from error
        raise
    _sync_folder(path.parent)


def _mode_for(path: Path) -> int:
    """The permission bits ``path`` should have: its current ones, or a new file's."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:  # Linux: reading it is free of the race that setting it to read it has
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.<pid>.*.tmp`` siblings whose writing process no longer exists."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.fullmatch(sibling.name)
        if match and not _process_exists(int(match.group(1))):
            with contextlib.suppress(OSError):
                sibling.unlink()


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return True  # not a writer's pid: leave the file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort; not possible everywhere)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
