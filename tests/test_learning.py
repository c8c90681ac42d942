"""Learning really happens: on an unpaired pair with a known mapping, G finds it."""

from __future__ import annotations

import numpy as np
from skimage import data

from napari_cyclestyle._sample_data import stain
from napari_cyclestyle.config import Config, ModelConfig, TrainConfig
from napari_cyclestyle.inference import translate
from napari_cyclestyle.trainer import Trainer


def test_training_maps_held_out_patches_close_to_the_true_mapping(tmp_path):
    # A: gray textures (top halves). B: the *other* halves, rendered by a known stain
    # model, so no A image has its B counterpart. The true G is `stain`.
    textures = [data.brick(), data.grass(), data.gravel()]
    domain_a = [texture[:256] for texture in textures]
    domain_b = [stain(texture[256:]) for texture in textures]
    held_out = [texture[300:428, 300:428] for texture in textures]
    config = Config(
        model=ModelConfig(
            generator="resnet_6blocks", ngf=8, ndf=8, discriminator="n_layers",
            n_layers_discriminator=2,
        ),
        train=TrainConfig(
            n_steps=60, n_steps_decay=60, crop_size=32, batch_size=4, learning_rate=5e-4,
            preview_every=0, checkpoint_every=0, log_every=20, device="cpu",
        ),
    )  # fmt: skip
    trainer = Trainer(domain_a, domain_b, config, output=tmp_path / "stain.safetensors")

    def error_to_true_mapping() -> float:
        model = trainer.model
        errors = [
            np.abs(translate(patch, model, "AtoB").astype(float) - stain(patch)).mean()
            for patch in held_out
        ]
        return float(np.mean(errors))

    before = error_to_true_mapping()
    warnings = [str(warning) for event in trainer.run() for warning in event.warnings]
    after = error_to_true_mapping()
    assert after < 0.5 * before, f"mean absolute error {before:.1f} -> {after:.1f}"
    assert warnings == []  # a healthy run: the health watch stays silent
