"""Fields that remember their values between sessions, in Qt's settings store.

The values live in :class:`QSettings` under the plugin's organisation name (an INI file
in the place Qt keeps application settings, e.g. ``~/.config/napari-cyclestyle/`` on
Linux); the plugin writes no file of its own. Tests point Qt's store elsewhere with
``QSettings.setPath``.
"""

from __future__ import annotations

import json
from pathlib import Path

from magicgui.widgets.bases import ValueWidget
from qtpy.QtCore import QSettings

ORGANISATION = "napari-cyclestyle"


def settings_store(application: str) -> QSettings:
    """The plugin's settings store for one widget (``application``, e.g. ``"train"``)."""
    return QSettings(
        QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANISATION, application
    )


class RememberedFields:
    """Save fields' values whenever they change, and restore them when built again.

    Parameters
    ----------
    application : str
        The store's name for this widget.
    fields : dict
        Field name → magicgui value widget.
    """

    def __init__(self, application: str, fields: dict[str, ValueWidget]) -> None:
        self.application = application
        self.fields = fields
        self.defaults = {name: field.value for name, field in fields.items()}
        self.restore()
        for name, field in fields.items():
            field.changed.connect(lambda value, name=name: self.save(name, value))

    def restore(self) -> None:
        """Give each field its stored value; a value the field refuses is skipped."""
        store = settings_store(self.application)
        for name, field in self.fields.items():
            text = store.value(name)
            if text is None:
                continue
            try:
                value = json.loads(str(text))
                field.value = Path(value) if isinstance(self.defaults[name], Path) else value
            except (ValueError, TypeError, KeyError):
                continue  # a stale or foreign entry: the field keeps its default

    def save(self, name: str, value) -> None:
        """Store one field's value."""
        store = settings_store(self.application)
        store.setValue(name, json.dumps(str(value) if isinstance(value, Path) else value))
        store.sync()

    def reset(self) -> None:
        """Put every field back to its default and forget the stored values."""
        for name, field in self.fields.items():
            field.value = self.defaults[name]
        store = settings_store(self.application)
        store.clear()
        store.sync()
