"""Every choice list of the package, in one place (torch-free).

The configuration validates against these, the networks' registry is keyed by them, and
the CLI and the widgets offer them; add a value here and in the one module that gives it
a meaning.
"""

from __future__ import annotations

GENERATORS: tuple[str, ...] = (
    "resnet_9blocks",
    "resnet_6blocks",
    "unet_256",
    "unet_128",
    "encoder_decoder",
)
DISCRIMINATORS: tuple[str, ...] = ("basic", "n_layers", "pixel")
NORMS: tuple[str, ...] = ("instance", "batch", "none")
GAN_MODES: tuple[str, ...] = ("lsgan", "vanilla", "hinge")
# What a run trains (see TrainConfig.mode): CycleGAN's two directions with the cycle, or
# CUT's and FastCUT's one direction (G and D_B) with PatchNCE instead.
MODES: tuple[str, ...] = ("cyclegan", "cut", "fastcut")
# How the generators up-sample (see networks.layers.upsampling_layers).
UPSAMPLINGS: tuple[str, ...] = ("transposed", "resize")
# The differentiable augmentations a DiffAugment policy may combine (see augment.py).
DIFF_AUGMENTS: tuple[str, ...] = ("color", "translation", "cutout")
# How tiled translation normalises InstanceNorm layers (see the tiling package).
STATISTICS_MODES: tuple[str, ...] = ("exact", "estimate", "tile")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
# What ``best_metric`` may name (see the validation module): ``auto`` is ``ssim`` with
# paired validation data, else ``cycle``.
BEST_METRICS: tuple[str, ...] = ("auto", "cycle", "realism", "psnr", "ssim")
