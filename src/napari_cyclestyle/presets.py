"""Named settings that reproduce a published recipe, kept in one place (torch-free).

A preset sets its settings explicitly, so that its results stay reproducible when the
package's defaults change. The CLI's ``train --preset`` and the quality benchmark's
``paper`` method read them from here: ``paper`` (CycleGAN), ``cut`` and ``fastcut``.
"""

from __future__ import annotations

from typing import Any

# Least squares GAN and Adam 2e-4 with beta1 0.5 as the paper and CUT train, and none
# of the methods of issue 19.
_PLAIN_TRAIN: dict[str, Any] = {
    "gan_mode": "lsgan",
    "learning_rate": 2e-4,
    "beta1": 0.5,
    "beta2": 0.999,
    "ema_decay": 0.0,
    "lambda_r1": 0.0,
    "lambda_structure": 0.0,
    "diff_augment": "",
}
# The CycleGAN paper's recipe (Zhu et al. 2017), as this package trains it: the above,
# cycle weight 10, identity 0.5 (relative), a pool of 50 fakes, transposed convolutions.
PAPER: dict[str, dict[str, Any]] = {
    "model": {"upsampling": "transposed", "spectral_norm": False},
    "train": {
        "mode": "cyclegan",
        "lambda_cycle_a": 10.0,
        "lambda_cycle_b": 10.0,
        "lambda_identity": 0.5,
        "pool_size": 50,
        "lambda_nce": 0.0,
        **_PLAIN_TRAIN,
    },
}

# CUT's recipe (Park et al. 2020, the authors' defaults): G and D_B alone, least squares
# GAN, PatchNCE of weight 1 on A and (identity) on B over the encoder layers 0, 4, 8, 12,
# 16 with 256 patches, no history pool, Adam 2e-4 with beta1 0.5, and none of the
# methods of issue 19. FastCUT: without the identity term, PatchNCE weight 10.
_CUT_TRAIN: dict[str, Any] = {
    "nce_layers": "",
    "nce_patches": 256,
    "pool_size": 0,
    **_PLAIN_TRAIN,
}
CUT: dict[str, dict[str, Any]] = {
    "model": PAPER["model"],
    "train": {"mode": "cut", "lambda_nce": 1.0, **_CUT_TRAIN},
}
FASTCUT: dict[str, dict[str, Any]] = {
    "model": PAPER["model"],
    "train": {"mode": "fastcut", "lambda_nce": 10.0, **_CUT_TRAIN},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"paper": PAPER, "cut": CUT, "fastcut": FASTCUT}


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
