"""Export to ONNX, TorchScript and bioimage.io: the exported graphs equal translate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

from napari_cyclestyle import export, translate
from napari_cyclestyle.cli import main
from napari_cyclestyle.config import ModelConfig
from napari_cyclestyle.exporting import ExportError
from napari_cyclestyle.intensity import IntensityNorm
from napari_cyclestyle.model import CycleStyleModel, build_generators
from napari_cyclestyle.model_file import load_model, save_model

ort = pytest.importorskip("onnxruntime")

SIZES = [(37, 45), (40, 64)]  # odd and even
UINT8_A = IntensityNorm("fixed", (0.0,), (255.0,), "uint8")
UINT16_B = IntensityNorm("percentile", (100.0, 200.0, 300.0), (3000.0, 3500.0, 4000.0), "uint16")


@pytest.fixture(autouse=True)
def _bioimageio_cache(tmp_path, monkeypatch):
    """bioimageio's cache (for downloads; the packages here refer to local files only,
    and the tests pass without any network) goes to a folder of the test's own."""
    settings = pytest.importorskip("bioimageio.spec._internal._settings").settings
    monkeypatch.setattr(settings, "cache_path", tmp_path / "bioimageio-cache")


def make_model(
    generator: str, norm_a=UINT8_A, norm_b=UINT16_B, seed: int = 0, upsampling="transposed"
):
    """A tiny untrained 1-channel A ↔ 3-channel B model with non-trivial weights."""
    torch.manual_seed(seed)
    config = ModelConfig(
        generator=generator, ngf=4, channels_a=1, channels_b=3, upsampling=upsampling
    )
    networks = build_generators(config)
    for network in networks:
        for parameter in network.parameters():
            parameter.data.normal_(0.0, 0.3)
        network.eval()
    return CycleStyleModel(config, *networks, norm_a, norm_b, info={"steps": 7})


def identity_norms(model: CycleStyleModel) -> CycleStyleModel:
    """The same networks with float32 [-1, 1] domains: translate returns the network's
    own output, to compare on the [-1, 1] scale."""
    unit_a = IntensityNorm("fixed", (-1.0,), (1.0,), "float32")
    unit_b = IntensityNorm("fixed", (-1.0,) * 3, (1.0,) * 3, "float32")
    return CycleStyleModel(model.config, model.generator_ab, model.generator_ba, unit_a, unit_b)


def source_image(model: CycleStyleModel, direction: str, size, seed: int = 1) -> np.ndarray:
    """A random ``(C, Y, X)`` image in the source domain's dtype and range."""
    norm, _ = model.norms(direction)
    rng = np.random.default_rng(seed)
    channels = model.channels(direction)[0]
    low, high = np.asarray(norm.low)[:, None, None], np.asarray(norm.high)[:, None, None]
    values = low + rng.random((channels, *size)) * (high - low)
    return np.rint(values).astype(norm.dtype)


def translated(image: np.ndarray, model, direction: str) -> np.ndarray:
    """translate of a (C, Y, X) plane as (C, Y, X)."""
    channel_axis = 0 if image.shape[0] > 1 else None
    result = translate(
        image if channel_axis == 0 else image[0], model, direction, device="cpu",
        channel_axis=channel_axis, tile_size=None,
    )  # fmt: skip
    if result.ndim == 2:
        return result[None]
    return result if channel_axis == 0 else np.moveaxis(result, -1, 0)


def normalise_with_metadata(image: np.ndarray, meta: dict[str, str], which: str):
    """What a consumer does with the exported metadata alone."""
    norm = IntensityNorm.from_dict(json.loads(meta[f"{which}_normalization"]))
    return norm.normalize(image) if which == "input" else norm.denormalize(image)


@pytest.fixture(
    scope="module",
    params=[
        ("resnet_6blocks", "transposed"),
        ("unet_128", "transposed"),
        ("resnet_6blocks", "resize"),
    ],
    ids=["resnet_6blocks", "unet_128", "resnet_6blocks-resize"],
)
def exported(request, tmp_path_factory):
    """A model of each generator (and up-sampling), exported to ONNX and TorchScript in
    both directions."""
    generator, upsampling = request.param
    model = make_model(generator, upsampling=upsampling)
    folder = tmp_path_factory.mktemp(generator)
    onnx_paths = export(model, folder / "model.onnx", "onnx", "both")
    script_paths = export(model, folder / "model", "torchscript", "both")
    pairs = zip(onnx_paths, script_paths, strict=True)
    return model, dict(zip(("AtoB", "BtoA"), pairs, strict=True))


def run_onnx(path, batch: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    return session.run(None, {"input": batch})[0], meta


@pytest.mark.numerics
@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])  # 1 → 3 and 3 → 1 channels
@pytest.mark.parametrize("size", SIZES, ids=["odd", "even"])
def test_onnx_and_torchscript_equal_translate(exported, direction, size):
    model, paths = exported
    onnx_path, script_path = paths[direction]
    image = source_image(model, direction, size)
    # the consumer's normalisation, from the ONNX metadata alone; a batch of two
    _, meta = run_onnx(onnx_path, np.zeros((1, image.shape[0], 8, 8), np.float32))
    net_in = normalise_with_metadata(image, meta, "input")
    batch = np.stack([net_in, -net_in])
    onnx_out, _ = run_onnx(onnx_path, batch)
    script = torch.jit.load(str(script_path))
    with torch.no_grad():
        script_out = script(torch.from_numpy(batch)).numpy()

    # [-1, 1] scale: translate through float [-1, 1] domains returns the network output
    unit = identity_norms(model)
    expected = np.stack([translated(x, unit, direction) for x in batch])
    assert onnx_out.shape == expected.shape == (2, model.channels(direction)[1], *size)
    assert np.abs(onnx_out - expected).max() < 1e-4
    assert np.abs(script_out - expected).max() < 1e-4
    # after post-processing: within one level of translate's uint8 / uint16 result
    reference = translated(image, model, direction).astype(np.int64)
    for out in (onnx_out[0], script_out[0]):
        values = normalise_with_metadata(out, meta, "output")
        assert values.dtype == reference.dtype or values.dtype.kind == "u"
        assert np.abs(values.astype(np.int64) - reference).max() <= 1


def test_onnx_metadata_describes_translate(exported):
    model, paths = exported
    _, meta = run_onnx(paths["AtoB"][0], np.zeros((1, 1, 8, 8), np.float32))
    assert IntensityNorm.from_dict(json.loads(meta["input_normalization"])) == UINT8_A
    assert IntensityNorm.from_dict(json.loads(meta["output_normalization"])) == UINT16_B
    assert meta["direction"] == "AtoB" and meta["generator"] == "G"
    assert json.loads(meta["architecture"])["generator"] == model.config.generator
    assert json.loads(meta["provenance"]) == {"steps": 7}
    assert "clip" in meta["normalization_rule"]


def test_torchscript_runs_without_napari_cyclestyle(exported, tmp_path):
    model, paths = exported
    if model.config.generator != "resnet_6blocks":
        pytest.skip("one architecture shows it: the module holds no package code")
    image = source_image(model, "AtoB", (21, 30))
    net_in = UINT8_A.normalize(image)[None]
    np.save(tmp_path / "input.npy", net_in)
    script = textwrap.dedent(
        f"""
        import sys, json
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "napari_cyclestyle":
                    raise ImportError("napari_cyclestyle must not be needed")
        sys.meta_path.insert(0, Refuse())
        import numpy, torch
        extra = {{"metadata.json": ""}}
        module = torch.jit.load({str(paths["AtoB"][1])!r}, _extra_files=extra)
        with torch.no_grad():
            out = module(torch.from_numpy(numpy.load({str(tmp_path / "input.npy")!r})))
        numpy.save({str(tmp_path / "output.npy")!r}, out.numpy())
        assert json.loads(extra["metadata.json"])["direction"] == "AtoB"
        assert not any(m.startswith("napari_cyclestyle") for m in sys.modules)
        """
    )
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-I", "-c", script], check=True, env=environment)
    expected = translated(net_in[0], identity_norms(model), "AtoB")
    assert np.abs(np.load(tmp_path / "output.npy")[0] - expected).max() < 1e-4


def package_tensors(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        rdf = archive.read("rdf.yaml").decode()
        arrays = {}
        for name in ("input.npy", "output.npy"):
            with archive.open(name) as file:
                arrays[name] = np.load(file)
    return names, rdf, arrays


def check_package(path, model, direction):
    from bioimageio.core import test_model

    summary = test_model(path)
    assert summary.status == "passed", summary.format()
    names, rdf, arrays = package_tensors(path)
    assert {"weights.onnx", "weights.pt", "cover.png", "README.md"} <= set(names)
    for text in ("BSD-3-Clause", "10.1109/ICCV.2017.244", "scale_linear", "clip",
                 "ensure_dtype", "batch", "channel", "napari_cyclestyle"):  # fmt: skip
        assert text in rdf
    # the test tensors are translate's result
    source = arrays["input.npy"][0]
    assert np.array_equal(arrays["output.npy"][0], translated(source, model, direction))


def test_bioimageio_package_passes_bioimageio_core(tmp_path):
    model = make_model("resnet_6blocks")
    (path,) = export(model, tmp_path / "stain", "bioimageio", "G", authors=["A. Tester"])
    assert path == tmp_path / "stain.zip"
    check_package(path, model, "AtoB")
    rdf = package_tensors(path)[1]
    assert "A. Tester" in rdf and "10.1109/ICCV.2017.244" in rdf
    assert "Contrastive Learning" not in rdf  # no PatchNCE in this model's training


def test_a_model_trained_with_patchnce_cites_cut_too():
    from napari_cyclestyle.exporting.bioimage import CUT, CYCLEGAN, citations

    model = make_model("resnet_6blocks")
    assert citations(model) == [CYCLEGAN]
    model.info = {**model.info, "losses": {"cycle_A": 0.4, "NCE_A": 3.1}}
    assert citations(model) == [CYCLEGAN, CUT]


@pytest.mark.slow
@pytest.mark.parametrize("generator", ["resnet_6blocks", "unet_128"])
def test_bioimageio_packages_of_both_directions(tmp_path, generator):
    model = make_model(generator)
    paths = export(model, tmp_path / "model.zip", "bioimageio", "both")
    assert [p.name for p in paths] == ["model_AtoB.zip", "model_BtoA.zip"]
    for path, direction in zip(paths, ("AtoB", "BtoA"), strict=True):
        check_package(path, model, direction)


@pytest.fixture
def one_sided_reference(tmp_path):
    """A reference-layout single-generator checkpoint (latest_net_G.pth)."""
    network = make_model("resnet_6blocks").generator_ab
    path = tmp_path / "latest_net_G.pth"
    torch.save(network.state_dict(), path)
    return path


def test_reference_checkpoint_exports_its_one_direction(one_sided_reference, tmp_path):
    (path,) = export(one_sided_reference, tmp_path / "reference.onnx", "onnx")
    assert path.name == "reference.onnx"
    image = source_image(make_model("resnet_6blocks", norm_b=None), "AtoB", (24, 33))
    out, meta = run_onnx(path, UINT8_A.normalize(image)[None])
    assert json.loads(meta["input_normalization"]) is None
    expected = translated(image, load_model(one_sided_reference), "AtoB")
    denormalised = np.clip(np.rint((out[0] + 1) * 127.5), 0, 255)
    assert np.abs(denormalised - expected).max() <= 1


def test_export_refuses_a_direction_the_model_lacks(one_sided_reference, tmp_path):
    with pytest.raises(ExportError, match="no BtoA generator"):
        export(one_sided_reference, tmp_path / "x.onnx", "onnx", "BtoA")
    with pytest.raises(ExportError, match="no BtoA generator"):
        export(one_sided_reference, tmp_path / "x.onnx", "onnx", "both")
    assert not list(tmp_path.glob("x*"))


def test_export_refuses_unknown_format_and_direction(tmp_path):
    model = make_model("resnet_6blocks")
    with pytest.raises(ExportError, match="Unknown export format"):
        export(model, tmp_path / "x", "tflite")
    with pytest.raises(ExportError, match="Unknown direction"):
        export(model, tmp_path / "x", "onnx", "sideways")


def test_export_to_an_unwritable_path_names_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(
        OSError, match="Could not write .*a-file/model_AtoB.onnx: .*a-file is a file"
    ):
        export(make_model("resnet_6blocks"), blocker / "model.onnx", "onnx")


@pytest.fixture
def model_file(tmp_path):
    return save_model(make_model("resnet_6blocks"), tmp_path / "stain.safetensors")


def test_cli_export_writes_one_file_per_direction(model_file, tmp_path, capsys):
    code = main(["export", str(model_file), "--format", "torchscript", "-o", str(tmp_path / "s")])
    assert code == 0
    assert (tmp_path / "s_AtoB.pt").is_file() and (tmp_path / "s_BtoA.pt").is_file()
    assert "wrote" in capsys.readouterr().err


def test_cli_export_reports_errors(model_file, one_sided_reference, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["export", str(model_file), "-f", "onnx", "-o", str(blocker / "m")]) == 1
    assert "error: Could not write" in capsys.readouterr().err
    code = main(["export", str(one_sided_reference), "-f", "onnx", "-d", "F", "-o", "x.onnx"])
    assert code == 1
    assert "no BtoA generator" in capsys.readouterr().err
    assert main(["export", str(model_file), "-f", "tflite", "-o", "x"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("generator", "norm", "dropout"),
    [
        ("resnet_9blocks", "batch", True),
        ("unet_256", "instance", True),
        ("unet_128", "none", False),
        ("encoder_decoder", "instance", False),
    ],
)
def test_other_architectures_export_faithfully(tmp_path, generator, norm, dropout):
    torch.manual_seed(3)
    config = ModelConfig(
        generator=generator, ngf=4, channels_a=3, channels_b=3, norm=norm, dropout=dropout
    )
    networks = build_generators(config)
    # without norm layers, wide weights make activations so large that float rounding
    # alone moves the output; the reference's initialisation (0.02) keeps them sane
    spread = 0.3 if norm != "none" else 0.02
    for network in networks:
        for parameter in network.parameters():
            parameter.data.normal_(0.0, spread)
        for buffer_name, buffer in network.named_buffers():
            if buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        network.eval()
    unit = IntensityNorm("fixed", (-1.0,) * 3, (1.0,) * 3, "float32")
    model = CycleStyleModel(config, *networks, unit, unit)
    (onnx_path,) = export(model, tmp_path / "m.onnx", "onnx", "AtoB")
    (script_path,) = export(model, tmp_path / "m.pt", "torchscript", "AtoB")
    script = torch.jit.load(str(script_path))
    for size in [(7, 300), *SIZES]:
        image = np.random.default_rng(0).uniform(-1, 1, (3, *size)).astype(np.float32)
        expected = translated(image, model, "AtoB")
        onnx_out, _ = run_onnx(onnx_path, image[None])
        with torch.no_grad():
            script_out = script(torch.from_numpy(image[None])).numpy()
        assert np.abs(onnx_out[0] - expected).max() < 1e-4
        assert np.abs(script_out[0] - expected).max() < 1e-4


@pytest.mark.slow
def test_reference_checkpoint_exports_a_bioimageio_package(one_sided_reference, tmp_path):
    (path,) = export(one_sided_reference, tmp_path / "reference.zip", "bioimageio")
    check_package(path, load_model(one_sided_reference), "AtoB")
    assert "uint8" in package_tensors(path)[1]
