"""CUT's PatchNCE loss (Park et al. 2020): beside CycleGAN's cycle loss, or instead of it
in the one-sided modes (``TrainConfig.mode``).

A generator's own encoder embeds its input and its output; at randomly chosen spatial
positions (the same for both) a small MLP head per encoder layer projects the features,
and an InfoNCE loss asks each output patch to match the input patch at its position
rather than the other sampled positions of the same image (temperature 0.07, as in the
authors' code, with negatives from the same image only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional

from .networks import init_weights
from .settings import ConfigError

# CUT's choice of layers for its ResNet generator (indices into the generator's layer
# sequence: the padded input, the two down-sampling stages, two residual blocks).
DEFAULT_LAYERS = (0, 4, 8, 12, 16)
TEMPERATURE = 0.07
HEAD_WIDTH = 256


def encoder_layers(generator: nn.Module) -> list[nn.Module]:
    """The leading layers of ``generator.model`` up to its first up-sampling layer.

    Raises
    ------
    ConfigError
        For a generator whose layers are not a sequence (the U-Nets).
    """
    sequence = getattr(generator, "model", None)
    if not isinstance(sequence, nn.Sequential):
        raise ConfigError(
            "PatchNCE (lambda_nce, and the modes cut and fastcut, which train with it) "
            "needs a generator whose layers are a sequence: a resnet or the "
            "encoder_decoder generator, not a U-Net; choose one of those generators."
        )
    layers = []
    for layer in sequence:
        if isinstance(layer, (nn.ConvTranspose2d, nn.Upsample)):
            break
        layers.append(layer)
    return layers


def choose_layers(generator: nn.Module, requested: Sequence[int]) -> tuple[int, ...]:
    """The encoder layers PatchNCE reads: ``requested``, or CUT's choice within the
    encoder when empty.

    Raises
    ------
    ConfigError
        If a requested index is not a layer of the encoder.
    """
    length = len(encoder_layers(generator))
    if not requested:
        return tuple(index for index in DEFAULT_LAYERS if index < length)
    bad = [index for index in requested if not 0 <= index < length]
    if bad:
        raise ConfigError(
            f"nce_layers {bad} are not layers of the generator's encoder (0 to {length - 1})."
        )
    return tuple(sorted(set(requested)))


def encode(generator: nn.Module, images: Tensor, layers: Sequence[int]) -> list[Tensor]:
    """The outputs of the encoder layers ``layers`` of ``generator`` on ``images``."""
    features, wanted = [], set(layers)
    x = images
    for index, layer in enumerate(encoder_layers(generator)[: max(layers) + 1]):
        x = layer(x)
        if index in wanted:
            features.append(x)
    return features


class PatchNCE(nn.Module):
    """The PatchNCE loss of one generator, with its MLP heads (training state).

    Parameters
    ----------
    generator : nn.Module
        The generator whose encoder embeds input and output (its input and output must
        have the same channel count).
    layers : sequence of int
        Encoder layers to read (see :func:`choose_layers`).
    n_patches : int
        Positions sampled per image and layer (CUT: 256).
    """

    def __init__(self, generator: nn.Module, layers: Sequence[int], n_patches: int) -> None:
        super().__init__()
        self.layers, self.n_patches = tuple(layers), n_patches
        channels = self._channels(generator)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(c, HEAD_WIDTH), nn.ReLU(), nn.Linear(HEAD_WIDTH, HEAD_WIDTH))
            for c in channels
        )
        init_weights(self.heads)

    def _channels(self, generator: nn.Module) -> list[int]:
        """Channels of each read layer's output, from the layers' own facts."""
        channels, found = generator.in_channels, []
        for index, layer in enumerate(encoder_layers(generator)):
            channels = getattr(layer, "out_channels", channels)
            if index in self.layers:
                found.append(channels)
        return found

    def forward(self, generator: nn.Module, source: Tensor, output: Tensor) -> Tensor:
        """The loss of ``output = generator(source)``, averaged over the layers.

        The source's features are the keys (no gradient); the output's are the queries,
        so the gradient reaches the generator through its output and its encoder.
        """
        keys = encode(generator, source, self.layers)
        queries = encode(generator, output, self.layers)
        total = source.new_zeros(())
        for head, key, query in zip(self.heads, keys, queries, strict=True):
            n, c, height, width = key.shape
            positions = torch.randperm(height * width, device=key.device)[: self.n_patches]
            sampled = [
                functional.normalize(head(f.flatten(2)[:, :, positions].transpose(1, 2)), dim=-1)
                for f in (query, key)
            ]
            total = total + patch_nce_loss(sampled[0], sampled[1].detach())
        return total / len(self.heads)


def patch_nce_loss(queries: Tensor, keys: Tensor) -> Tensor:
    """InfoNCE of ``(N, P, D)`` unit vectors: query ``p`` against key ``p`` (positive) and
    the other keys of the same image (negatives), at temperature 0.07."""
    n_patches = queries.shape[1]
    similarity = torch.bmm(queries, keys.transpose(1, 2)) / TEMPERATURE  # (N, P, P)
    # CUT's logits: the positive first, then the negatives with the positive masked out.
    positive = similarity.diagonal(dim1=1, dim2=2).unsqueeze(-1)
    eye = torch.eye(n_patches, dtype=torch.bool, device=queries.device)
    negatives = similarity.masked_fill(eye, -10.0 / TEMPERATURE)
    logits = torch.cat([positive, negatives], dim=-1).flatten(0, 1)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return functional.cross_entropy(logits, target)
