"""Translation spread over a dask.distributed cluster equals the single-process result."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_cyclestyle.config import ModelConfig
from napari_cyclestyle.inference import translate
from napari_cyclestyle.intensity import IntensityNorm
from napari_cyclestyle.model import CycleStyleModel, build_generators
from napari_cyclestyle.networks import init_weights

distributed = pytest.importorskip("distributed")


def make_model(generator: str = "resnet_6blocks", dtype: str = "uint16") -> CycleStyleModel:
    config = ModelConfig(generator=generator, channels_a=1, channels_b=1, ngf=4)
    generator_ab, generator_ba = build_generators(config)
    init_weights(generator_ab)
    high = 4095.0 if dtype == "uint16" else 1.0
    norm = IntensityNorm("fixed", (0.0,), (high,), dtype)
    return CycleStyleModel(config, generator_ab.eval(), generator_ba.eval(), norm, norm)


def write_zarr(path, image: np.ndarray, chunks: tuple[int, ...]) -> str:
    source = zarr.open_array(
        str(path), mode="w", shape=image.shape, dtype=image.dtype, chunks=chunks
    )
    source[:] = image
    return str(path)


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def workers_that_ran(client, run) -> set[str]:
    with distributed.get_task_stream(client) as tasks:
        run()
    return {task["worker"] for task in tasks.data}


@pytest.mark.numerics
def test_a_local_cluster_of_two_workers_translates_a_zarr_stack_like_one_process(tmp_path, client):
    model = make_model()
    image = np.random.default_rng(0).integers(0, 4096, (6, 48, 40)).astype(np.uint16)
    source = write_zarr(tmp_path / "in.zarr", image, (1, 48, 40))
    expected = translate(image, model, "AtoB", device="cpu")

    lazy = translate(da.from_zarr(source), model, "AtoB", device="cpu")
    ran_on = workers_that_ran(client, lambda: lazy.to_zarr(str(tmp_path / "out.zarr")))

    assert ran_on == set(client.scheduler_info()["workers"])
    result = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]
    np.testing.assert_array_equal(result, expected)


@pytest.mark.numerics
@pytest.mark.parametrize("generator", ["resnet_6blocks", "unet_128"])
def test_tiles_of_one_plane_spread_over_workers_equal_the_whole_plane(tmp_path, client, generator):
    model = make_model(generator, dtype="float32")
    image = np.random.default_rng(1).random((300, 260)).astype(np.float32)
    source = write_zarr(tmp_path / "in.zarr", image, (100, 100))
    whole = translate(image, model, device="cpu", tile_size=None)
    steps = []

    ran_on = workers_that_ran(
        client,
        lambda: translate(
            da.from_zarr(source),
            model,
            device="cpu",
            tile_size=128,
            output=str(tmp_path / "out.zarr"),
            progress=lambda done, total: steps.append((done, total)),
        ),
    )

    assert ran_on == set(client.scheduler_info()["workers"])
    result = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]
    assert np.abs(result - whole).max() <= 1e-5
    assert steps[-1][0] == steps[-1][1] and len(steps) == steps[-1][1]
    # no stored activations are left beside the output (where the workers kept them)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.zarr"]


def test_output_with_chunks_unlike_the_tiles_is_written_whole(tmp_path, client):
    model = make_model(dtype="float32")
    image = np.random.default_rng(2).random((2, 150, 130)).astype(np.float32)
    whole = translate(image, model, device="cpu", tile_size=None)
    output = zarr.open_array(
        str(tmp_path / "out.zarr"), mode="w", shape=image.shape, dtype="float32",
        chunks=(2, 28, 36),
    )  # fmt: skip

    translate(image, model, device="cpu", tile_size=48, output=output)

    assert np.abs(output[:] - whole).max() <= 1e-5


@pytest.mark.numerics
def test_estimated_statistics_on_a_cluster_equal_those_of_one_process(tmp_path, client):
    model = make_model(dtype="float32")
    image = np.random.default_rng(3).random((200, 180)).astype(np.float32)
    options = {"device": "cpu", "tile_size": 64, "statistics": "estimate"}
    local = translate(image, model, **options)  # numpy output: runs here

    translate(image, model, output=str(tmp_path / "out.zarr"), **options)

    result = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]
    assert np.abs(result - local).max() <= 1e-5


def test_whole_planes_spread_over_workers_and_shared_chunks_are_refused(tmp_path, client):
    model = make_model()
    image = np.random.default_rng(4).integers(0, 4096, (4, 40, 48)).astype(np.uint16)
    expected = translate(image, model, device="cpu")

    ran_on = workers_that_ran(
        client, lambda: translate(image, model, device="cpu", output=str(tmp_path / "a.zarr"))
    )
    assert ran_on == set(client.scheduler_info()["workers"])
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"))[:], expected)

    shared = zarr.open_array(
        str(tmp_path / "b.zarr"), mode="w", shape=image.shape, dtype="uint16",
        chunks=(2, 40, 48),
    )  # fmt: skip
    with pytest.raises(ValueError, match="one plane per chunk"):
        translate(image, model, device="cpu", output=shared)


def test_the_cli_translates_a_zarr_image_on_a_dask_scheduler(tmp_path, client):
    from napari_cyclestyle.cli import EXIT_OK, main
    from napari_cyclestyle.model_file import save_model

    model = make_model()
    save_model(model, tmp_path / "model.safetensors")
    image = np.random.default_rng(6).integers(0, 4096, (160, 144)).astype(np.uint16)
    source = write_zarr(tmp_path / "slide.zarr", image, (64, 64))
    argv = ["translate", str(tmp_path / "model.safetensors"), source, "--tile-size", "64"]
    argv += ["--dask-scheduler", client.scheduler.address, "--device", "cpu"]

    codes = []
    ran_on = workers_that_ran(client, lambda: codes.append(main(argv)))

    assert codes == [EXIT_OK]
    assert ran_on == set(client.scheduler_info()["workers"])
    result = zarr.open_array(str(tmp_path / "slide_AtoB.zarr"), mode="r")[:]
    expected = translate(image, model, device="cpu", tile_size=64)
    assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1


def test_stopping_a_cluster_translation_leaves_no_scratch(tmp_path, client):
    from napari_cyclestyle.inference import translate_steps

    model = make_model(dtype="float32")
    image = np.random.default_rng(7).random((160, 160)).astype(np.float32)
    steps = translate_steps(
        image, model, device="cpu", tile_size=64, output=str(tmp_path / "out.zarr")
    )

    for step in steps:
        if step.done == 3:
            break
    steps.close()

    assert step.total > 3 and step.result is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
