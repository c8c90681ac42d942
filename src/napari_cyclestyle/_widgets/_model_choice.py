"""The translate widget's model: one trained in this session, or a file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, FileEdit, Label
from napari.utils.notifications import show_error

from ._registry import TrainedModel, trained_models

FROM_FILE = "model file…"


class ModelChoice:
    """The model list, the model file and a line describing the loaded model.

    ``model`` lists the models trained in this session and ``model file…`` (then
    ``model_file`` is read: our ``.safetensors`` or a reference CycleGAN ``.pth``).

    Parameters
    ----------
    on_loaded : callable
        Called with each model that becomes the loaded one.
    """

    def __init__(self, on_loaded: Callable[[Any], None]):
        self._on_loaded = on_loaded
        self.loaded_model = None  # the CycleStyleModel in use
        self._loaded_key: Any = None
        self.model = ComboBox(label="model", choices=self._model_choices)
        self.model_file = FileEdit(
            label="model file",
            mode="r",
            nullable=True,
            filter="Model files (*.safetensors *.pth)",
        )
        self.model_info = Label(label="", value="no model loaded")
        self.model_info.native.setWordWrap(True)
        self.model.changed.connect(self.on_choice)
        self.model_file.changed.connect(self.on_choice)

    @property
    def widgets(self) -> list:
        """The fields, in order."""
        return [self.model, self.model_file, self.model_info]

    @property
    def source(self) -> str:
        """Where the chosen model comes from (its file)."""
        choice = self.model.value
        return str(choice.path if isinstance(choice, TrainedModel) else self.model_file.value)

    def _model_choices(self, _widget=None):
        entries = [(entry.label, entry) for entry in reversed(list(trained_models))]
        return [*entries, (FROM_FILE, FROM_FILE)]

    def offer(self, entry: TrainedModel) -> None:
        """Offer a model just trained, and choose it: it is the one to try."""
        self.model.reset_choices()
        self.model.value = entry
        self.on_choice()

    def on_choice(self, _value=None) -> None:
        """Load the chosen model (a file is read here; errors become notifications)."""
        from_file = self.model.value == FROM_FILE
        self.model_file.visible = from_file
        if from_file and not str(self.model_file.value or "").strip():
            self._set_model(None, None, "no model: choose a model file")
            return  # nothing chosen yet is not an error
        try:
            self.load()
        except ValueError as error:
            show_error(str(error))

    def load(self):
        """Return the chosen model, loading a file when it changed.

        Raises
        ------
        ValueError
            If no model is chosen or the file cannot be used (the message says why).
        """
        choice = self.model.value
        if isinstance(choice, TrainedModel):
            key, source = ("trained", choice.path), choice
        else:
            path = self.model_file.value
            if path is None or not str(path).strip():
                self._set_model(None, None, "no model: choose a model file")
                raise ValueError("Choose a model file (*.safetensors or a CycleGAN .pth).")
            path = Path(path)
            stamp = path.stat().st_mtime if path.is_file() else None
            key, source = ("file", path, stamp), path
        if key == self._loaded_key and self.loaded_model is not None:
            return self.loaded_model
        if isinstance(source, TrainedModel):
            model = source.model
        else:
            from ..model_file import load_model

            try:
                model = load_model(source)
            except ValueError:
                self._set_model(None, None, f"no model: {source.name} could not be loaded")
                raise
        self._set_model(model, key, model.describe())
        return model

    def _set_model(self, model, key, description: str) -> None:
        self.loaded_model, self._loaded_key = model, key
        self.model_info.value = description
        if model is not None:
            self._on_loaded(model)
