"""``napari-cyclestyle export``: a model's generators as ONNX, TorchScript or bioimage.io."""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_OK


def add_parser(subparsers) -> None:
    from ..exporting import FORMATS

    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or a bioimage.io package",
        description=(
            "Export the model's generators as whole-plane graphs (any height and width; "
            "float32 (N, C, Y, X) in [-1, 1] in and out): ONNX with the intensity "
            "normalisation in its metadata, TorchScript (runs without napari-cyclestyle), "
            "or a bioimage.io model package (ONNX + TorchScript weights, pre- and "
            "post-processing, test tensors; tested with bioimageio.core). Needs "
            "pip install 'napari-cyclestyle[export]'."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="model file, reference .pth or folder")
    parser.add_argument(
        "--format",
        "-f",
        choices=list(FORMATS),
        required=True,
        help="onnx, torchscript, or bioimageio (one package per direction)",
    )
    parser.add_argument(
        "--direction",
        "-d",
        help="AtoB (alias G), BtoA (alias F) or both (default: every direction the model holds)",
    )
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="OUT",
        help="file to write (suffix .onnx, .pt or .zip added when missing); with two "
        "directions _AtoB and _BtoA go before the suffix",
    )
    parser.add_argument(
        "--author",
        action="append",
        metavar="NAME",
        help="an author of the bioimage.io package (repeatable)",
    )
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ..exporting import export

    for path in export(args.model, args.output, args.format, args.direction, authors=args.author):
        print(f"wrote {path}", file=sys.stderr, flush=True)
    return EXIT_OK
