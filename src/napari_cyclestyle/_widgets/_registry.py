"""Models trained in this Python session, so the translate widget can offer them.

The training widget adds each model it finishes (or stops); the translate widget lists
them beside "model file…" and selects the newest. No Qt and no torch here: entries hold
a loaded :class:`~napari_cyclestyle.CycleStyleModel` and the file it was saved to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psygnal import Signal


@dataclass(frozen=True)
class TrainedModel:
    """A model trained in this session: a label for people, its file and the model."""

    label: str
    path: Path
    model: Any  # CycleStyleModel; typed loosely to keep this module torch-free


class _TrainedModels:
    """An ordered, evented list of :class:`TrainedModel` (newest last)."""

    changed = Signal(object)  # emits the entry just added

    def __init__(self) -> None:
        self._entries: list[TrainedModel] = []

    def add(self, path: Path, model: Any) -> TrainedModel:
        """Record ``model`` (saved at ``path``); a model saved again to the same path
        replaces its older entry."""
        path = Path(path)
        steps = getattr(model, "info", {}).get("steps", "?")
        entry = TrainedModel(f"{path.name} (trained here, {steps} steps)", path, model)
        self._entries = [e for e in self._entries if e.path != path] + [entry]
        self.changed.emit(entry)
        return entry

    def __iter__(self):
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def latest(self) -> TrainedModel | None:
        """The most recently added entry, or None."""
        return self._entries[-1] if self._entries else None

    def clear(self) -> None:
        """Forget every entry (tests use this)."""
        self._entries.clear()


trained_models = _TrainedModels()
