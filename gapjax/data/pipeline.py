"""Input pipelines: datasets held on the device, or streamed from the host with prefetch.

- ``DeviceDataset`` keeps a whole dataset in device memory (CIFAR-10 as uint8 is 150 MB); an
  epoch is a device-side permutation (``jax.random.permutation``) and every batch is gathered on
  the device by one compiled function whose only per-step input is the step number.
- ``host_batches`` + ``prefetch_to_device`` stream datasets too large for the device: batches
  are gathered with NumPy and put on the device by a background thread, ``size`` batches ahead.

Both yield dicts ``{"images", "labels", "mask"}``. ``mask`` (bool, ``(batch,)``) is False on the
padding rows of a last, partial batch (``drop_last=False``, for evaluation): sum the metrics of
valid rows and divide once by the number of valid rows, never average per-batch averages. Given
a ``jax.sharding.Mesh``, batches are sharded over its ``data_axis`` (leading axis); the batch
size must be a multiple of that axis' size.
"""

import functools
import math
import queue
import threading
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, ArrayLike, Int, Shaped

from gapjax.data.splits import Split

__all__ = ["DeviceDataset", "host_batches", "prefetch_to_device"]

Batch = dict[str, jax.Array]


def _check_arrays(images, labels, fn: str) -> None:
    if np.ndim(images) < 1 or np.ndim(labels) != 1 or np.shape(images)[0] != np.shape(labels)[0]:
        raise ValueError(
            f"{fn}: images {np.shape(images)} and labels {np.shape(labels)} must share their "
            "first (example) axis, labels being (n,)."
        )


def _check_batch_size(batch_size: int, mesh: Mesh | None, data_axis: str, fn: str) -> None:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise ValueError(f"{fn}: batch_size={batch_size!r} must be a positive int.")
    if mesh is not None:
        if data_axis not in mesh.shape:
            raise ValueError(f"{fn}: data_axis={data_axis!r} is not an axis of {mesh.shape}.")
        if batch_size % mesh.shape[data_axis]:
            raise ValueError(
                f"{fn}: batch_size={batch_size} is not a multiple of the {mesh.shape[data_axis]} "
                f"devices on mesh axis {data_axis!r}."
            )


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


class DeviceDataset:
    """A dataset held whole in device memory, batched on the device.

    Args:
      images: ``(n, ...)`` array (uint8 images are the cheapest to keep; convert per batch).
      labels: ``(n,)`` int labels.
      mesh: optional ``jax.sharding.Mesh``: the data is replicated on its devices and every batch
        is sharded over ``data_axis``.
      data_axis: the mesh axis that splits the batch.

    Example:
      >>> import jax, numpy as np
      >>> from gapjax.data import DeviceDataset
      >>> ds = DeviceDataset(np.arange(5, dtype=np.uint8)[:, None], np.arange(5, dtype=np.int32))
      >>> [b["labels"].tolist() for b in ds.batches(2, drop_last=False)]
      [[0, 1], [2, 3], [4, 0]]
      >>> [b["mask"].tolist() for b in ds.batches(2, drop_last=False)][-1]
      [True, False]
      >>> sorted(int(i) for b in ds.batches(1, key=jax.random.key(0)) for i in b["labels"])
      [0, 1, 2, 3, 4]
    """

    def __init__(
        self,
        images: Shaped[ArrayLike, "n ..."],
        labels: Int[ArrayLike, " n"],
        *,
        mesh: Mesh | None = None,
        data_axis: str = "data",
    ):
        _check_arrays(images, labels, "DeviceDataset")
        self.mesh = mesh
        self.data_axis = data_axis
        if mesh is not None:
            if data_axis not in mesh.shape:
                raise ValueError(
                    f"DeviceDataset: data_axis={data_axis!r} is not an axis of {mesh.shape}."
                )
            replicated = NamedSharding(mesh, PartitionSpec())
            batch_sharding = NamedSharding(mesh, PartitionSpec(data_axis))
        else:
            replicated = batch_sharding = None
        self.images = jax.device_put(images, replicated)
        self.labels = jax.device_put(jnp.asarray(labels, jnp.int32), replicated)
        self._batch_sharding = batch_sharding
        self._gather = jax.jit(
            _gather,
            static_argnames=("batch_size",),
            out_shardings=None if batch_sharding is None else batch_sharding,
        )

    @classmethod
    def from_split(
        cls, split: Split, *, mesh: Mesh | None = None, data_axis: str = "data"
    ) -> "DeviceDataset":
        """Puts a ``Split`` (uint8 images, int32 labels) on the device."""
        return cls(split.images, split.labels, mesh=mesh, data_axis=data_axis)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def num_batches(self, batch_size: int, *, drop_last: bool = True) -> int:
        """How many batches ``batches`` yields per epoch."""
        return _num_batches(len(self), batch_size, drop_last)

    def batches(
        self, batch_size: int, *, key: ArrayLike | None = None, drop_last: bool = True
    ) -> Iterator[Batch]:
        """One epoch of batches, gathered on the device.

        Args:
          batch_size: examples per batch (a multiple of the mesh's data axis size).
          key: a ``jax.random`` key to shuffle the epoch (a device-side permutation); None keeps
            the stored order (evaluation).
          drop_last: drop a last partial batch (training). With False, the last batch is padded
            to ``batch_size`` with copies of example 0 whose ``mask`` is False (evaluation).

        Returns:
          An iterator of ``{"images": (batch, ...), "labels": (batch,) int32,
          "mask": (batch,) bool}`` device arrays (sharded over the mesh's data axis if any).
        """
        _check_batch_size(batch_size, self.mesh, self.data_axis, "DeviceDataset.batches")
        n = len(self)
        steps = _num_batches(n, batch_size, drop_last)
        order = _epoch_order(key, n, batch_size)
        for step in range(steps):
            yield self._gather(self.images, self.labels, order, step, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("n", "length"))
def _shuffled_order(key: ArrayLike, *, n: int, length: int) -> jax.Array:
    perm = jax.random.permutation(key, n).astype(jnp.int32)
    return jnp.concatenate([perm, jnp.full((length - n,), -1, jnp.int32)])


def _epoch_order(key, n: int, batch_size: int) -> jax.Array:
    """The epoch's example order on the device, padded with -1 to a multiple of batch_size.

    The length depends only on n and batch_size, so training (drop_last) and evaluation epochs
    share one compiled gather.
    """
    length = math.ceil(n / batch_size) * batch_size
    if key is None:
        return jnp.where(jnp.arange(length) < n, jnp.arange(length, dtype=jnp.int32), -1)
    return _shuffled_order(key, n=n, length=length)


def _gather(
    images: Shaped[Array, "n ..."],
    labels: Int[Array, " n"],
    order: Int[Array, " m"],
    step: Int[ArrayLike, ""],
    *,
    batch_size: int,
) -> Batch:
    idx = jax.lax.dynamic_slice_in_dim(order, step * batch_size, batch_size)
    mask = idx >= 0
    idx = jnp.where(mask, idx, 0)
    return {
        "images": jnp.take(images, idx, axis=0),
        "labels": jnp.take(labels, idx, axis=0),
        "mask": mask,
    }


def host_batches(
    images: Shaped[ArrayLike, "n ..."],
    labels: Int[ArrayLike, " n"],
    *,
    batch_size: int,
    key: ArrayLike | None = None,
    drop_last: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of NumPy batches gathered on the host (for data too large for the device).

    The same contract as ``DeviceDataset.batches``; feed it to ``prefetch_to_device``. Works on
    ``np.memmap`` arrays (e.g. ``np.load(..., mmap_mode="r")``), reading only each batch.

    Args:
      images: ``(n, ...)`` host array.
      labels: ``(n,)`` ints.
      batch_size: examples per batch.
      key: a ``jax.random`` key to shuffle (the permutation is computed once per epoch and
        fetched to the host); None keeps the stored order.
      drop_last: drop a last partial batch; with False it is padded and masked.

    Returns:
      An iterator of ``{"images", "labels" (int32), "mask" (bool)}`` NumPy batches.

    Example:
      >>> import numpy as np
      >>> from gapjax.data import host_batches
      >>> x, y = np.zeros((3, 2), np.float32), np.array([7, 8, 9])
      >>> [(b["labels"].tolist(), b["mask"].tolist())
      ...  for b in host_batches(x, y, batch_size=2, drop_last=False)]
      [([7, 8], [True, True]), ([9, 7], [True, False])]
    """
    _check_arrays(images, labels, "host_batches")
    _check_batch_size(batch_size, None, "", "host_batches")
    n = len(labels)
    steps = _num_batches(n, batch_size, drop_last)
    order = np.asarray(_epoch_order(key, n, batch_size))
    for step in range(steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        mask = idx >= 0
        idx = np.where(mask, idx, 0)
        # Sorted reads are kinder to memory maps; restore the batch order after.
        sort = np.argsort(idx, kind="stable")
        unsort = np.empty_like(sort)
        unsort[sort] = np.arange(len(sort))
        yield {
            "images": np.asarray(images[idx[sort]])[unsort],
            "labels": np.asarray(labels)[idx].astype(np.int32),
            "mask": mask,
        }


def prefetch_to_device(
    batches: Iterable,
    *,
    size: int = 2,
    mesh: Mesh | None = None,
    data_axis: str = "data",
) -> Iterator:
    """Puts batches on the device from a background thread, ``size`` batches ahead.

    Host work (reading, gathering) and host-to-device copies overlap with the training step.
    The thread stops when the iterator is exhausted or closed; an exception raised while
    producing a batch is raised here, in the consumer.

    Args:
      batches: an iterable of pytrees of host arrays (e.g. ``host_batches(...)``).
      size: how many batches may wait on the device.
      mesh: optional mesh: every leaf's leading axis is sharded over ``data_axis``.
      data_axis: the mesh axis for the batch.

    Returns:
      An iterator of the same pytrees as device arrays.

    Example:
      >>> import numpy as np
      >>> from gapjax.data import host_batches, prefetch_to_device
      >>> x, y = np.ones((4, 2), np.float32), np.arange(4)
      >>> [type(b["images"]).__name__ for b in prefetch_to_device(host_batches(x, y, batch_size=2))]
      ['ArrayImpl', 'ArrayImpl']
    """
    if size < 1:
        raise ValueError(f"prefetch_to_device: size={size} must be at least 1.")
    if mesh is not None and data_axis not in mesh.shape:
        raise ValueError(f"prefetch_to_device: data_axis={data_axis!r} is not in {mesh.shape}.")
    sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(data_axis))
    return _Prefetcher(iter(batches), size, sharding)


class _Prefetcher:
    """The iterator ``prefetch_to_device`` returns (a class, so that ``close`` stops the thread)."""

    _DONE = object()

    def __init__(self, source: Iterator, size: int, sharding):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(source, sharding), daemon=True, name="prefetch_to_device"
        )
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, source: Iterator, sharding) -> None:
        try:
            for batch in source:
                if not self._put(("ok", jax.device_put(batch, sharding))):
                    return
            self._put(("done", None))
        except BaseException as e:  # handed to the consumer
            self._put(("error", e))

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "ok":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stops the background thread and drops the batches it prepared."""
        self._stop.set()
        self._thread.join()

    def __del__(self):
        self._stop.set()
