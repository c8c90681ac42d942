"""BioImage Model Zoo (bioimage.io, spec 0.5) model packages of one generator.

A package holds the ONNX and TorchScript weights of :mod:`.graph`, typed axes (batch,
channel, y, x; any height and width: the padding is in the graphs), the source
domain's normalisation as pre-processing (``ensure_dtype``, ``scale_linear``, ``clip``)
and the target domain's as post-processing (``scale_linear``, ``clip``,
``ensure_dtype``), test tensors and a cover made with ``translate``, authors, licence,
citations and the training provenance. Every file is local: building and testing a
package needs no network. The package is tested with ``bioimageio.core`` before it is
written.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..intensity import IntensityNorm
from ..model import CycleStyleModel
from . import ExportError, display_rgb, export_norms, metadata

LICENSE = "BSD-3-Clause"
# (text, doi) of what the package's model rests on; CUT where PatchNCE trained it.
CYCLEGAN = (
    "Zhu, Park, Isola, Efros: Unpaired Image-to-Image Translation using Cycle-Consistent "
    "Adversarial Networks. ICCV 2017.",
    "10.1109/ICCV.2017.244",
)
CUT = (
    "Park, Efros, Zhang, Zhu: Contrastive Learning for Unpaired Image-to-Image "
    "Translation. ECCV 2020.",
    "10.1007/978-3-030-58545-7_19",
)


def citations(model: CycleStyleModel) -> list[tuple[str, str]]:
    """The works to cite for ``model``: CycleGAN, and CUT when its PatchNCE loss trained
    the model (the provenance's losses name it)."""
    losses = model.info.get("losses") or {}
    return [CYCLEGAN, CUT] if any(name.startswith("NCE_") for name in losses) else [CYCLEGAN]


DEFAULT_AUTHOR = "napari-cyclestyle user"
# Largest side of the test tensors: big enough to show, small enough to keep packages
# small and their test quick.
TEST_SIDE = 128
_ENSURE_DTYPES = (
    "float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64",
    "int64",
)  # fmt: skip


def package_bytes(
    model: CycleStyleModel,
    direction: str,
    weights: dict[str, bytes],
    *,
    authors: Sequence[str] | None = None,
    sample=None,
) -> bytes:
    """The zip of a bioimage.io model package of one direction, tested by
    ``bioimageio.core`` (ONNX and TorchScript) before it is returned.

    Raises
    ------
    ExportError
        If a domain's dtype cannot be described, or ``bioimageio.core``'s test fails.
    """
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as spec

    norm_in, norm_out = export_norms(model, direction)
    for norm in (norm_in, norm_out):
        if norm.dtype not in _ENSURE_DTYPES:
            raise ExportError(
                f"A bioimage.io package cannot describe a {norm.dtype} domain; export to "
                "onnx or torchscript instead."
            )
    in_channels, out_channels = model.channels(direction)
    test_input = _test_input(model, direction, norm_in, sample)
    test_output = _translate(test_input, model, direction)
    with tempfile.TemporaryDirectory(prefix="cyclestyle-bioimageio-") as folder:
        folder = Path(folder)
        files = {name: folder / name for name in ("input.npy", "output.npy", "cover.png")}
        np.save(files["input.npy"], test_input[None])
        np.save(files["output.npy"], test_output[None])
        _write_cover(files["cover.png"], test_input, test_output, norm_in, norm_out)
        (folder / "weights.onnx").write_bytes(weights["onnx"])
        (folder / "weights.pt").write_bytes(weights["torchscript"])
        readme = folder / "README.md"
        readme.write_text(_readme(model, direction, norm_in, norm_out), encoding="utf-8")

        inputs = [
            spec.InputTensorDescr(
                id=spec.TensorId("input"),
                description=f"domain {direction[0]} image",
                axes=_axes(spec, in_channels, output=False),
                test_tensor=spec.FileDescr(source=files["input.npy"]),
                data=spec.IntervalOrRatioDataDescr(type=norm_in.dtype),
                preprocessing=_preprocessing(spec, norm_in),
            )
        ]
        outputs = [
            spec.OutputTensorDescr(
                id=spec.TensorId("output"),
                description=f"the image translated to domain {direction[-1]}",
                axes=_axes(spec, out_channels, output=True),
                test_tensor=spec.FileDescr(source=files["output.npy"]),
                data=spec.IntervalOrRatioDataDescr(type=norm_out.dtype),
                postprocessing=_postprocessing(spec, norm_out),
            )
        ]
        description = _describe(model, direction, spec, inputs, outputs, folder, authors)
        zip_path = folder / "package.zip"
        save_bioimageio_package(description, output_path=zip_path)
        _test_package(zip_path)
        return zip_path.read_bytes()


def _describe(model, direction, spec, inputs, outputs, folder: Path, authors):
    """The ModelDescr of the package (bioimage.io validates it on construction)."""
    import torch

    facts = metadata(model, direction)
    generator = "G" if direction == "AtoB" else "F"
    torch_version = spec.Version(torch.__version__.split("+")[0])
    norm_in, norm_out = export_norms(model, direction)
    tolerance = _tolerance(spec, norm_out)
    return spec.ModelDescr(
        name=f"CycleGAN {generator} {direction[0]} to {direction[-1]} {model.config.generator}",
        description=(
            f"Translates domain {direction[0]} images ({norm_in.dtype}, {len(norm_in.low)} "
            f"channel(s)) to domain {direction[-1]} ({norm_out.dtype}, {len(norm_out.low)}): "
            f"the CycleGAN generator {generator} ({model.config.generator}) of a "
            "napari-cyclestyle model, on whole planes of any size."
        ),
        authors=[spec.Author(name=name) for name in (authors or [DEFAULT_AUTHOR])],
        cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in citations(model)],
        license=spec.LicenseId(LICENSE),
        documentation=spec.FileDescr(source=folder / "README.md"),
        covers=[spec.FileDescr(source=folder / "cover.png")],
        tags=["cyclegan", "image-to-image", "unpaired", "style-transfer", "2d"],
        inputs=inputs,
        outputs=outputs,
        weights=spec.WeightsDescr(
            torchscript=spec.TorchscriptWeightsDescr(
                source=folder / "weights.pt", pytorch_version=torch_version
            ),
            # Both come from the same network; the ONNX graph is traced by the
            # TorchScript-based exporter, so it names TorchScript as its parent.
            onnx=spec.OnnxWeightsDescr(
                source=folder / "weights.onnx", opset_version=17, parent="torchscript"
            ),
        ),
        config=spec.Config(
            bioimageio=spec.BioimageioConfig(
                reproducibility_tolerance=[tolerance],
                architecture_type=model.config.generator,
                task="image-to-image translation",
                model_parameter_count=sum(
                    p.numel() for p in model.generator(direction).parameters()
                ),
                training=spec.TrainingDetails(
                    training_preprocessing=facts["normalization_rule"],
                    loss_function="CycleGAN: adversarial (PatchGAN) + cycle-consistency L1",
                ),
            ),
            napari_cyclestyle={
                key: (json.loads(value) if key in _JSON_FACTS else value)
                for key, value in facts.items()
            },
        ),
    )


_JSON_FACTS = ("input_normalization", "output_normalization", "architecture", "provenance")


def _axes(spec, n_channels: int, output: bool) -> list:
    channels = spec.ChannelAxis(
        channel_names=[spec.Identifier(f"channel{index}") for index in range(n_channels)]
    )
    if output:
        spatial = [
            spec.SpaceOutputAxis(
                id=spec.AxisId(name),
                size=spec.SizeReference(
                    tensor_id=spec.TensorId("input"), axis_id=spec.AxisId(name)
                ),
            )
            for name in ("y", "x")
        ]
    else:
        # Any size: the graphs pad to what the architecture needs and crop back.
        spatial = [
            spec.SpaceInputAxis(id=spec.AxisId(name), size=spec.ParameterizedSize(min=1, step=1))
            for name in ("y", "x")
        ]
    return [spec.BatchAxis(), channels, *spatial]


def _preprocessing(spec, norm: IntensityNorm) -> list:
    """``IntensityNorm.normalize``: (value - low) * 2 / (high - low) - 1, clipped."""
    low, high = np.asarray(norm.low, np.float64), np.asarray(norm.high, np.float64)
    gain = 2.0 / (high - low)
    offset = -low * gain - 1.0
    return [
        spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
        _scale_linear(spec, gain, offset),
        spec.ClipDescr(kwargs=spec.ClipKwargs(min=-1.0, max=1.0)),
        spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
    ]


def _postprocessing(spec, norm: IntensityNorm) -> list:
    """``IntensityNorm.denormalize``: (y + 1) * (high - low) / 2 + low; integer dtypes
    rounded and clipped. ``ensure_dtype`` truncates, so 0.5 is added first: exact
    rounding for unsigned types (and for signed ones above zero)."""
    low, high = np.asarray(norm.low, np.float64), np.asarray(norm.high, np.float64)
    gain = (high - low) / 2.0
    offset = gain + low
    dtype = np.dtype(norm.dtype)
    steps = []
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        steps = [
            _scale_linear(spec, gain, offset + 0.5),
            spec.ClipDescr(kwargs=spec.ClipKwargs(min=float(info.min), max=float(info.max))),
        ]
    else:
        steps = [_scale_linear(spec, gain, offset)]
    return [*steps, spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype=norm.dtype))]


def _scale_linear(spec, gain: np.ndarray, offset: np.ndarray):
    if len(gain) == 1:
        return spec.ScaleLinearDescr(
            kwargs=spec.ScaleLinearKwargs(gain=float(gain[0]), offset=float(offset[0]))
        )
    return spec.ScaleLinearDescr(
        kwargs=spec.ScaleLinearAlongAxisKwargs(
            axis=spec.AxisId("channel"),
            gain=[float(g) for g in gain],
            offset=[float(o) for o in offset],
        )
    )


def _tolerance(spec, norm_out: IntensityNorm):
    """Reproduction within one level for integer outputs (ONNX Runtime and PyTorch may
    round a value near .5 differently), else 1e-4 on the network's [-1, 1] scale."""
    if np.issubdtype(np.dtype(norm_out.dtype), np.integer):
        absolute = 1.0
    else:
        widths = [high - low for low, high in zip(norm_out.low, norm_out.high, strict=True)]
        absolute = 1e-4 * max(widths) / 2
    return spec.ReproducibilityTolerance(
        absolute_tolerance=absolute, relative_tolerance=1e-4, mismatched_elements_per_million=0
    )


def _test_input(model: CycleStyleModel, direction: str, norm: IntensityNorm, sample) -> np.ndarray:
    """A ``(C, Y, X)`` source image in the source domain's dtype: ``sample`` (its first
    plane), or the bundled sample made to fit; at most ``TEST_SIDE`` px a side."""
    in_channels, _ = model.channels(direction)
    if sample is not None:
        from ..layout import infer_layout, to_planes

        sample = np.asarray(sample)
        layout = infer_layout(sample.shape, expected_channels=in_channels)
        plane = np.asarray(to_planes(sample, layout)[0])
    else:
        plane = _bundled_sample(direction, in_channels, norm)
    height, width = plane.shape[-2:]
    top, left = max(0, (height - TEST_SIDE) // 2), max(0, (width - TEST_SIDE) // 2)
    plane = plane[:, top : top + TEST_SIDE, left : left + TEST_SIDE]
    return np.ascontiguousarray(plane.astype(norm.dtype, copy=False))


def _bundled_sample(direction: str, n_channels: int, norm: IntensityNorm) -> np.ndarray:
    """The bundled sample of the source domain (A: gray brightfield, B: RGB stained) as
    ``(C, Y, X)``, in ``norm``'s range and dtype."""
    from .._sample_data import sample_domains, stain

    # the whole 512-px images, subsampled: a view of the scene, not a corner of sky
    domain_a, domain_b = sample_domains(4 * TEST_SIDE)
    domain_a, domain_b = domain_a[:, ::4, ::4], domain_b[:, ::4, ::4]
    gray = domain_a[0] if direction == "AtoB" else domain_b[0].mean(-1).astype(np.uint8)
    rgb = stain(gray) if direction == "AtoB" else domain_b[0]
    if n_channels == 3:
        planes = np.moveaxis(rgb, -1, 0)
    else:
        planes = np.repeat(gray[None], n_channels, axis=0)
    unit = planes.astype(np.float64) / 255.0
    low = np.asarray(norm.low, np.float64)[:, None, None]
    high = np.asarray(norm.high, np.float64)[:, None, None]
    values = low + unit * (high - low)
    dtype = np.dtype(norm.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _translate(plane: np.ndarray, model: CycleStyleModel, direction: str) -> np.ndarray:
    """``translate`` of a ``(C, Y, X)`` plane, whole (no tiling), as ``(C, Y, X)``."""
    from ..inference import translate

    image = plane[0] if plane.shape[0] == 1 else plane
    channel_axis = None if plane.shape[0] == 1 else 0
    result = translate(
        image, model, direction, device="cpu", channel_axis=channel_axis, tile_size=None
    )
    if result.ndim == 2:
        return result[None]
    return result if channel_axis == 0 else np.moveaxis(result, -1, 0)


def _write_cover(path: Path, source, result, norm_in, norm_out) -> None:
    """The source beside its translation (bioimage.io asks for about 2:1)."""
    import imageio.v3 as iio

    left, right = display_rgb(source, norm_in), display_rgb(result, norm_out)
    gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
    iio.imwrite(path, np.concatenate([left, gap, right], axis=1))


def _test_package(path: Path) -> None:
    """Run ``bioimageio.core``'s test of the package; raise ExportError if it fails."""
    from bioimageio.core import test_model

    summary = test_model(path)
    if summary.status != "passed":
        failures = [
            f"{detail.name}: {'; '.join(str(e.msg) for e in detail.errors)}"
            for detail in summary.details
            if detail.status == "failed"
        ]
        raise ExportError(
            "bioimageio.core's test of the package failed: " + " | ".join(failures[:3])
        )


def _readme(model, direction, norm_in: IntensityNorm, norm_out: IntensityNorm) -> str:
    facts = metadata(model, direction)
    generator = "G" if direction == "AtoB" else "F"
    cited = "\n\n".join(f"{text} doi:{doi}" for text, doi in citations(model))
    return f"""# CycleGAN generator {generator}: domain {direction[0]} to domain {direction[-1]}

{facts["description"]}

Exported by {facts["exported_by"]} from a `{model.config.generator}` generator
(ngf {model.config.ngf}, norm {model.config.norm}).

## Input and output

- input: `(batch, channel, y, x)`, {norm_in.dtype}, {len(norm_in.low)} channel(s) of
  domain {direction[0]}, any height and width;
- pre-processing: {facts["normalization_rule"]};
  here low {list(norm_in.low)}, high {list(norm_in.high)};
- output: `(batch, channel, y, x)`, {norm_out.dtype}, in domain {direction[-1]}'s range
  (low {list(norm_out.low)}, high {list(norm_out.high)}).

## Whole planes, and tiling

The network runs on the whole plane: its InstanceNorm layers use the statistics of the
whole input, so tiles translated one by one show seams. For planes too large for one
pass, tile with generous overlap and blend, or use napari-cyclestyle's `translate`,
whose exact tiling equals a whole-plane pass.

## Training

{json.dumps(model.info, default=str)}

## Validation

The test tensors are a translation by napari-cyclestyle's `translate`; bioimageio.core
reproduces them from the ONNX and the TorchScript weights (within one level for integer
outputs).

## Citation

{cited}
"""
