"""Named settings that reproduce a published recipe, kept in one place (torch-free).

A preset sets its settings explicitly, so that its results stay reproducible when the
package's defaults change. The CLI's ``train --preset`` and the quality benchmark's
``paper`` method read them from here.
"""

from __future__ import annotations

from typing import Any

# The CycleGAN paper's recipe (Zhu et al. 2017), as this package trains it: least
# squares GAN, cycle weight 10, identity 0.5 (relative), a pool of 50 fakes, Adam 2e-4
# with beta1 0.5, transposed convolutions, and none of the methods of issue 19.
PAPER: dict[str, dict[str, Any]] = {
    "model": {"upsampling": "transposed", "spectral_norm": False},
    "train": {
        "gan_mode": "lsgan",
        "lambda_cycle_a": 10.0,
        "lambda_cycle_b": 10.0,
        "lambda_identity": 0.5,
        "pool_size": 50,
        "learning_rate": 2e-4,
        "beta1": 0.5,
        "beta2": 0.999,
        "ema_decay": 0.0,
        "lambda_r1": 0.0,
        "lambda_structure": 0.0,
        "diff_augment": "",
    },
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"paper": PAPER}


def apply_preset(name: str, settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``settings`` (a :meth:`~napari_cyclestyle.Config.to_dict` dict) with preset
    ``name``'s values set over it; a new dict.

    Raises
    ------
    ValueError
        If ``name`` is not a preset.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return {
        section: {**settings.get(section, {}), **PRESETS[name].get(section, {})}
        for section in ("model", "train")
    }
