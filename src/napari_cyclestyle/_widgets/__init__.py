"""The napari widgets of napari-cyclestyle (Qt/magicgui only; the core does the work).

napari imports :mod:`.train` and :mod:`.translate` lazily, when a widget is opened, so
this package imports neither torch nor Qt.
"""

from ._registry import TrainedModel, trained_models

__all__ = ["TrainedModel", "trained_models"]
