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


def test_a_local_cluster_of_two_workers_translates_a_zarr_stack_like_one_process(tmp_path):
    config = ModelConfig(generator="resnet_6blocks", channels_a=1, channels_b=1, ngf=4)
    generator_ab, generator_ba = build_generators(config)
    init_weights(generator_ab)
    norm = IntensityNorm("fixed", (0.0,), (4095.0,), "uint16")
    model = CycleStyleModel(config, generator_ab.eval(), generator_ba.eval(), norm, norm)
    image = np.random.default_rng(0).integers(0, 4096, (6, 48, 40)).astype(np.uint16)
    source = zarr.open_array(
        str(tmp_path / "in.zarr"), mode="w", shape=image.shape, dtype=image.dtype,
        chunks=(1, 48, 40),
    )  # fmt: skip
    source[:] = image
    expected = translate(image, model, "AtoB", device="cpu")

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        lazy = translate(da.from_zarr(str(tmp_path / "in.zarr")), model, "AtoB", device="cpu")
        with distributed.get_task_stream(client) as tasks:
            lazy.to_zarr(str(tmp_path / "out.zarr"))
        workers = set(client.scheduler_info()["workers"])
    ran_on = {task["worker"] for task in tasks.data}
    assert len(workers) == 2 and ran_on and ran_on <= workers
    result = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]
    np.testing.assert_array_equal(result, expected)
