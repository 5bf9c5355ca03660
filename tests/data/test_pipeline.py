"""Device-resident datasets, host streaming with prefetch, and batch sharding over a mesh."""

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gapjax.data import DeviceDataset, Split, host_batches, prefetch_to_device

N = 23


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(N)  # example i is recognizable by its first pixel
    labels = rng.integers(0, 10, N).astype(np.int32)
    return images, labels


@pytest.fixture(scope="module")
def ds(data):
    return DeviceDataset(*data)


def ids(batch):
    return np.asarray(batch["images"][:, 0, 0, 0]).astype(int)


def check_batch(batch, images, labels, batch_size):
    assert batch["images"].shape == (batch_size, 4, 4, 3) and batch["images"].dtype == jnp.uint8
    assert batch["labels"].dtype == jnp.int32 and batch["mask"].dtype == jnp.bool_
    i = ids(batch)
    np.testing.assert_array_equal(batch["images"], images[i])
    np.testing.assert_array_equal(batch["labels"], labels[i])


def test_training_epoch_is_a_device_permutation(ds, data):
    batches = list(ds.batches(5, key=jax.random.key(0)))
    assert len(batches) == ds.num_batches(5) == 4  # 23 // 5, the last partial batch dropped
    seen = np.concatenate([ids(b) for b in batches])
    assert len(set(seen)) == 20  # no example twice
    for b in batches:
        check_batch(b, *data, 5)
        assert bool(jnp.all(b["mask"]))
        assert isinstance(b["images"], jax.Array)
    # Deterministic given the key; another key, another order.
    again = np.concatenate([ids(b) for b in ds.batches(5, key=jax.random.key(0))])
    other = np.concatenate([ids(b) for b in ds.batches(5, key=jax.random.key(1))])
    np.testing.assert_array_equal(seen, again)
    assert not np.array_equal(seen, other)
    # The order is jax.random.permutation's, computed on the device.
    np.testing.assert_array_equal(
        seen, np.asarray(jax.random.permutation(jax.random.key(0), N))[:20]
    )


def test_evaluation_pads_and_masks_the_last_batch(ds, data):
    _, labels = data
    batches = list(ds.batches(5, drop_last=False))
    assert len(batches) == ds.num_batches(5, drop_last=False) == 5
    np.testing.assert_array_equal(np.concatenate([ids(b) for b in batches])[:N], np.arange(N))
    last = batches[-1]
    assert np.asarray(last["mask"]).tolist() == [True, True, True, False, False]
    # Sum over valid rows, divide once: the mean label equals the dataset's.
    total = sum(jnp.sum(jnp.where(b["mask"], b["labels"], 0)) for b in batches)
    count = sum(jnp.sum(b["mask"]) for b in batches)
    assert float(total / count) == pytest.approx(labels.mean())
    # Shuffled evaluation covers every example exactly once among the valid rows.
    valid = np.concatenate(
        [
            ids(b)[np.asarray(b["mask"])]
            for b in ds.batches(4, key=jax.random.key(3), drop_last=False)
        ]
    )
    assert sorted(valid) == list(range(N))


def test_no_retracing_across_steps_and_epochs(data):
    ds = DeviceDataset(*data)
    for _ in ds.batches(5, key=jax.random.key(4)):
        pass
    compiled = ds._gather._cache_size()  # jit's cache is shared with the other tests' datasets
    for key in (jax.random.key(5), jax.random.key(6)):
        for _ in ds.batches(5, key=key):
            pass
    for _ in ds.batches(5, drop_last=False):  # evaluation reuses the same compiled gather
        pass
    assert ds._gather._cache_size() == compiled


def test_from_split_and_errors(data):
    ds = DeviceDataset.from_split(Split(*data))
    assert len(ds) == N
    with pytest.raises(ValueError, match="batch_size=0"):
        next(ds.batches(0))
    with pytest.raises((ValueError, TypeError), match="labels"):
        DeviceDataset(np.zeros((3, 2)), np.zeros(4, np.int32))


def test_single_device_mesh_shards_batches(data):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    ds = DeviceDataset(*data, mesh=mesh)
    batch = next(ds.batches(4, key=jax.random.key(0)))
    assert batch["images"].sharding == NamedSharding(mesh, PartitionSpec("data"))
    check_batch(batch, *data, 4)
    with pytest.raises(ValueError, match="data_axis='batch' is not an axis"):
        DeviceDataset(*data, mesh=mesh, data_axis="batch")


def test_host_batches_follow_the_same_contract(data, tmp_path):
    images, labels = data
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    batches = list(host_batches(mapped, labels, batch_size=5, key=jax.random.key(0)))
    assert len(batches) == 4
    seen = np.concatenate([ids(b) for b in batches])
    np.testing.assert_array_equal(
        seen, np.asarray(jax.random.permutation(jax.random.key(0), N))[:20]
    )
    for b in batches:
        check_batch(b, images, labels, 5)
        assert isinstance(b["images"], np.ndarray)
    evaluation = list(host_batches(images, labels, batch_size=10, drop_last=False))
    assert [int(b["mask"].sum()) for b in evaluation] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([ids(b) for b in evaluation])[:N], np.arange(N))


def test_prefetch_to_device(data):
    images, labels = data
    host = list(host_batches(images, labels, batch_size=4, key=jax.random.key(2)))
    got = list(prefetch_to_device(iter(host), size=2))
    assert len(got) == len(host)
    for h, d in zip(host, got, strict=True):
        assert isinstance(d["images"], jax.Array)
        for k in ("images", "labels", "mask"):
            np.testing.assert_array_equal(d[k], h[k])


def test_prefetch_propagates_errors_and_stops(data):
    def source():
        yield {"x": np.ones(2)}
        raise OSError("disk went away")

    it = prefetch_to_device(source())
    assert np.asarray(next(it)["x"]).tolist() == [1.0, 1.0]
    with pytest.raises(OSError, match="disk went away"):
        next(it)
    # Closing early stops the producer thread even though the source is endless.
    produced = []

    def endless():
        while True:
            produced.append(1)
            yield {"x": np.zeros(3)}

    it = prefetch_to_device(endless(), size=2)
    next(it)
    it.close()
    assert not it._thread.is_alive()
    assert len(produced) <= 5
    assert not any(t.name == "prefetch_to_device" and t.is_alive() for t in threading.enumerate())


def test_four_device_mesh_in_a_subprocess():
    """With 4 (virtual CPU) devices, each batch is split 4 ways along its leading axis."""
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from jax.sharding import Mesh
        from gapjax.data import DeviceDataset, host_batches, prefetch_to_device
        assert len(jax.devices()) == 4
        mesh = Mesh(np.array(jax.devices()), ("data",))
        x = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
        y = np.arange(16, dtype=np.int32)
        ds = DeviceDataset(x, y, mesh=mesh)
        batch = next(ds.batches(8, key=jax.random.key(0)))
        shards = batch["images"].addressable_shards
        assert len(shards) == 4 and all(s.data.shape == (2, 2) for s in shards), shards
        np.testing.assert_array_equal(np.asarray(batch["images"])[:, 0] / 2, batch["labels"])
        try:
            next(ds.batches(6))
        except ValueError as e:
            assert "not a multiple of the 4 devices" in str(e)
        else:
            raise AssertionError("batch_size 6 accepted on 4 devices")
        (b,) = list(prefetch_to_device(host_batches(x, y, batch_size=16), mesh=mesh))
        assert len(b["labels"].addressable_shards) == 4
        print("ok")
        """
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
