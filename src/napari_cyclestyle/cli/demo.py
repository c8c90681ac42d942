"""``napari-cyclestyle demo``: train on the bundled sample images and translate them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..choices import DEVICES
from ..config import Config, ModelConfig, TrainConfig
from ..io import image_grid, image_to_rgb8, write_image
from .common import EXIT_INTERRUPTED, EXIT_OK, UsageError, add_threads_argument
from .train import run_training

DEMO_STEPS = 1600


DEMO_GENERATOR = "resnet_6blocks"


DEMO_WIDTH = 8


DEMO_CROP_SIZE = 48


DEMO_LEARNING_RATE = 1e-3  # 5x the paper's: a short run still gets somewhere


DEMO_THREADS = 1  # tiny networks: more threads cost more in overhead than they save


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train on the bundled sample images and translate them (about a minute)",
        description=(
            "Train a small model on the bundled sample domains (A: grayscale "
            "'brightfield' images, B: RGB 'stained' images, unpaired), then translate "
            "the A images to B and the B images to A. Writes into DIR: the model "
            "(demo-model.safetensors), the translated images (*_AtoB.png, *_BtoA.png) "
            "and demo.png (rows: A, G(A), B, F(B))."
        ),
    )
    parser.add_argument(
        "--output",
        "-o",
        default="cyclestyle-demo",
        metavar="DIR",
        help="folder for the model, images and figure (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEMO_STEPS,
        metavar="N",
        help="training steps, the last half with a decaying learning rate (default: %(default)s)",
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where to train (default: %(default)s)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=256,
        metavar="PIXELS",
        help=f"side of the sample images, at least {DEMO_CROP_SIZE} (default: %(default)s)",
    )
    add_threads_argument(parser, DEMO_THREADS)
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .._sample_data import sample_domains
    from ..inference import translate
    from ..trainer import Trainer

    if args.image_size < DEMO_CROP_SIZE:
        raise UsageError(f"--image-size must be at least {DEMO_CROP_SIZE}, got {args.image_size}.")
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}.")
    output = Path(args.output)
    domain_a, domain_b = sample_domains(args.image_size)
    config = Config(
        model=ModelConfig(
            generator=DEMO_GENERATOR,
            discriminator="n_layers",
            n_layers_discriminator=2,
            ngf=DEMO_WIDTH,
            ndf=DEMO_WIDTH,
        ),
        train=TrainConfig(
            n_steps=args.steps - args.steps // 2,
            n_steps_decay=args.steps // 2,
            crop_size=DEMO_CROP_SIZE,
            learning_rate=DEMO_LEARNING_RATE,
            device=args.device,
            checkpoint_every=0,
            preview_every=0,
            log_every=10,
        ),
    )
    trainer = Trainer(domain_a, domain_b, config, output=output / "demo-model.safetensors")
    if run_training(trainer):
        return EXIT_INTERRUPTED
    model = trainer.model
    rows = []
    for name, images, direction in (("A", domain_a, "AtoB"), ("B", domain_b, "BtoA")):
        translated = translate(images, model, direction, device=trainer.device)
        for index, image in enumerate(translated):
            write_image(output / f"sample_{name}{index}_{direction}.png", image)
        rows.append([image_to_rgb8(image) for image in images])
        rows.append([image_to_rgb8(image) for image in translated])
    figure = output / "demo.png"
    write_image(figure, image_grid(rows))
    print(
        f"Wrote the translated samples and {figure} (rows: A, G(A), B, F(B)) to {output}.",
        file=sys.stderr,
    )
    return EXIT_OK
