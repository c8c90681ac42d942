"""``python -m napari_cyclestyle.cli`` (as torchrun starts the training processes)."""

import sys

from .main import main

sys.exit(main())
