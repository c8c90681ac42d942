"""The errors the core raises while it runs, each with a message a user can act on.

Bad input and settings are ``ValueError`` (``ConfigError``, ``ModelFileError``), and files
that cannot be read or written are ``OSError``. What goes wrong while training or
translating is a :class:`CycleStyleError`, so that a front end (the CLI, the widgets)
can show each of them as one line without knowing every kind. Torch-free.
"""

from __future__ import annotations


class CycleStyleError(Exception):
    """A run of the core failed for a reason its message names, with what to try."""


class OutOfMemory(CycleStyleError, RuntimeError):
    """The device ran out of memory; the message says what to make smaller."""
