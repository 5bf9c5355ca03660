"""The paper's preprocessing, as jittable JAX functions with statistics fitted on the host.

Network In Network (Lin, Chen, Yan 2013, arXiv:1312.4400) preprocesses as maxout did (Goodfellow
et al. 2013, arXiv:1302.4389, with pylearn2):

- CIFAR-10/100: ``global_contrast_normalize`` (scale 55) per image, then ZCA whitening fitted on
  the training split (``fit_zca``, ``zca_whiten``)::

      train = global_contrast_normalize(splits["train"].images, scale=55.0)
      zca = fit_zca(train, bias=0.1)                # host, float64
      train = zca_whiten(train, zca=zca)            # device, float32
      test = zca_whiten(global_contrast_normalize(splits["test"].images), zca=zca)

- SVHN: ``global_contrast_normalize`` with scale 1, then ``local_contrast_normalize`` (7x7).
- Anything else (MNIST, digits, a modern baseline): per-channel standardization with statistics
  of the training split (``fit_channel_stats``, ``standardize``).

Fits (``fit_channel_stats``, ``fit_zca``) run on the host in float64 NumPy, in chunks, so that
50,000 CIFAR images need well under a GB beyond the data; the transforms run in float32 on the
device, compiled with ``jax.jit``, and take uint8 or float images ``(n, height, width, channels)``.
"""

import dataclasses
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Shaped

from gapjax.data._checks import check_int, check_real

__all__ = [
    "ZCA",
    "ChannelStats",
    "fit_channel_stats",
    "fit_zca",
    "global_contrast_normalize",
    "local_contrast_normalize",
    "standardize",
    "zca_whiten",
]

Images = Shaped[ArrayLike, "n height width channels"]
Scalar = float | Shaped[ArrayLike, ""]  # a Python number, or a scalar array (traced under jit)


def _pytree(cls):
    """Registers a frozen dataclass of arrays as a pytree whose unflattening skips ``__init__``.

    JAX rebuilds pytrees with placeholder leaves (``object()``, None) internally; going around
    ``__init__`` keeps its checks for what users construct.
    """
    names = [f.name for f in dataclasses.fields(cls)]

    def unflatten(_, leaves):
        obj = object.__new__(cls)
        for name, leaf in zip(names, leaves, strict=True):
            object.__setattr__(obj, name, leaf)
        return obj

    jax.tree_util.register_pytree_node(
        cls, lambda obj: ([getattr(obj, n) for n in names], None), unflatten
    )
    return cls


def _as_float32_fields(obj) -> None:
    """Stores every field of a frozen dataclass as a float32 JAX array."""
    for f in dataclasses.fields(obj):
        object.__setattr__(obj, f.name, jnp.asarray(getattr(obj, f.name), jnp.float32))


def _check_images(x, fn: str) -> None:
    if jnp.ndim(x) != 4:
        raise ValueError(
            f"{fn}: images must be (n, height, width, channels), got shape {jnp.shape(x)}."
        )


def _chunks(x, chunk_size: int):
    """Float64 NumPy chunks of ``x`` along its first axis, flattened to (rows, features).

    A chunk may be a view of ``x`` (float64 NumPy input): never modify it in place.
    """
    n = x.shape[0]
    for start in range(0, n, chunk_size):
        yield np.asarray(x[start : start + chunk_size], np.float64).reshape(
            min(chunk_size, n - start), -1
        )


# ------------------------------------------------------------------------------------------
# Per-channel standardization
# ------------------------------------------------------------------------------------------


@_pytree
@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and standard deviation of a training split (a pytree).

    Attributes:
      mean: ``(channels,)``, stored as a float32 JAX array.
      std: ``(channels,)``, the population standard deviation (1 where a channel is constant),
        stored as a float32 JAX array.
    """

    mean: Float[ArrayLike, " channels"]
    std: Float[ArrayLike, " channels"]

    def __post_init__(self):
        _as_float32_fields(self)


def fit_channel_stats(images: Images, *, chunk_size: int = 4096) -> ChannelStats:
    """Per-channel mean and standard deviation over all images and pixels (float64, host).

    Args:
      images: the training images ``(n, height, width, channels)``, any real dtype.
      chunk_size: images converted to float64 at a time.

    Returns:
      ``ChannelStats`` with float32 ``(channels,)`` arrays; a constant channel gets std 1.

    Example:
      >>> import numpy as np
      >>> from gapjax.data import fit_channel_stats
      >>> x = np.stack([np.full((2, 2, 2), [0, 10]), np.full((2, 2, 2), [2, 10])]).astype(np.uint8)
      >>> stats = fit_channel_stats(x)
      >>> stats.mean, stats.std
      (Array([ 1., 10.], dtype=float32), Array([1., 1.], dtype=float32))
    """
    images = images if hasattr(images, "shape") else np.asarray(images)
    _check_images(images, "fit_channel_stats")
    check_int(chunk_size, "chunk_size", "fit_channel_stats", minimum=1)
    c = images.shape[-1]
    total, total_sq, count = np.zeros(c), np.zeros(c), 0
    for chunk in _chunks(images, chunk_size):
        v = chunk.reshape(-1, c)
        total += v.sum(0)
        count += len(v)
    mean = total / max(count, 1)
    for chunk in _chunks(images, chunk_size):
        total_sq += ((chunk.reshape(-1, c) - mean) ** 2).sum(0)
    std = np.sqrt(total_sq / max(count, 1))
    std = np.where(std > 0, std, 1.0)
    return ChannelStats(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))


@jax.jit
def standardize(images: Images, *, stats: ChannelStats) -> Float[Array, "n height width channels"]:
    """``(x - mean) / std`` per channel, in float32.

    Args:
      images: ``(n, height, width, channels)``, any real dtype (uint8 on the device is cheapest
        to keep: convert batch by batch inside the training step).
      stats: from ``fit_channel_stats`` on the training split.

    Returns:
      float32 images of the same shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax.data import ChannelStats, standardize
      >>> stats = ChannelStats(jnp.array([1.0, 10.0]), jnp.array([2.0, 5.0]))
      >>> standardize(jnp.full((1, 1, 1, 2), 11, jnp.uint8), stats=stats)
      Array([[[[5. , 0.2]]]], dtype=float32)
    """
    _check_images(images, "standardize")
    if stats.mean.shape != (images.shape[-1],):
        raise ValueError(
            f"standardize: stats are for {stats.mean.shape} channels, images are {images.shape}."
        )
    return (jnp.asarray(images, jnp.float32) - stats.mean) / stats.std


# ------------------------------------------------------------------------------------------
# Global contrast normalization and ZCA whitening (CIFAR)
# ------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("min_divisor",))
def global_contrast_normalize(
    images: Images, *, scale: Scalar = 55.0, min_divisor: float = 1e-8
) -> Float[Array, "n height width channels"]:
    """Global contrast normalization (GCN) of each image over all its values.

    ``x' = scale * (x - mean(x)) / ||x - mean(x)||_2``, the mean and norm taken over the
    ``height * width * channels`` values of one image. This is pylearn2's
    ``global_contrast_normalize`` with ``subtract_mean=True, use_std=False, sqrt_bias=0``, used by
    maxout and NIN with ``scale=55`` on CIFAR and ``scale=1`` on SVHN. As there, an image whose
    divisor ``||x - mean(x)|| / scale`` is below ``min_divisor`` (a constant image) is only
    centered (divided by 1): never NaN.

    Args:
      images: ``(n, height, width, channels)``, any real dtype (0..255 uint8 as read).
      scale: the L2 norm of every normalized image.
      min_divisor: divisors below this are replaced by 1.

    Returns:
      float32 images of the same shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax.data import global_contrast_normalize
      >>> x = jnp.array([0, 1, 2, 3], jnp.uint8).reshape(1, 2, 2, 1)
      >>> y = global_contrast_normalize(x, scale=1.0)
      >>> y.ravel(), float(jnp.sum(y**2))
      (Array([-0.67082036, -0.2236068 ,  0.2236068 ,  0.67082036], dtype=float32), 1.0)
      >>> global_contrast_normalize(jnp.full((1, 2, 2, 1), 7.0)).ravel()
      Array([0., 0., 0., 0.], dtype=float32)
    """
    _check_images(images, "global_contrast_normalize")
    check_real(scale, "scale", "global_contrast_normalize", positive=True)  # unless traced
    check_real(min_divisor, "min_divisor", "global_contrast_normalize", minimum=0.0)
    x = jnp.asarray(images, jnp.float32)
    x = x - jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    divisor = jnp.sqrt(jnp.sum(x * x, axis=(1, 2, 3), keepdims=True)) / scale
    return x / jnp.where(divisor < min_divisor, 1.0, divisor)


@_pytree
@dataclasses.dataclass(frozen=True)
class ZCA:
    """A fitted ZCA whitening transform ``x' = (x - mean) @ whitening`` (a pytree).

    Attributes:
      mean: ``(features,)``, the training mean of the flattened images (``h * w * c`` values in
        NHWC order).
      whitening: ``(features, features)``, ``P = V diag((lambda + bias)^-1/2) V^T``.

    Both are stored as float32 JAX arrays.

    Save with ``zca.save(path)`` (an ``.npz``) and read back with ``ZCA.load(path)``.
    """

    mean: Float[ArrayLike, " features"]
    whitening: Float[ArrayLike, "features features"]

    def __post_init__(self):
        _as_float32_fields(self)

    def save(self, path: str | os.PathLike) -> None:
        """Writes ``mean`` and ``whitening`` to an ``.npz`` file (atomically)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.part.npz")
        np.savez(tmp, mean=np.asarray(self.mean), whitening=np.asarray(self.whitening))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ZCA":
        """Reads a transform written by ``save``; ValueError naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as f:
                mean, whitening = f["mean"], f["whitening"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a ZCA file written by ZCA.save ({e}).") from None
        if mean.ndim != 1 or whitening.shape != (len(mean), len(mean)):
            raise ValueError(
                f"{path}: mean {mean.shape} and whitening {whitening.shape} do not match."
            )
        return cls(jnp.asarray(mean, jnp.float32), jnp.asarray(whitening, jnp.float32))


def fit_zca(images: Images, *, bias: float = 0.1, chunk_size: int = 2048) -> ZCA:
    """Fits ZCA whitening on the training images, in float64 on the host (pylearn2's ``ZCA``).

    With ``X`` the ``(n, d)`` flattened images: ``mu = mean(X)``,
    ``C = (X - mu)^T (X - mu) / n + bias * I`` (the biased covariance, as pylearn2),
    ``C = V diag(lambda) V^T`` (``numpy.linalg.eigh``), ``P = V diag(lambda^-1/2) V^T``. ``X^T X``
    is accumulated ``chunk_size`` rows at a time: for CIFAR (d = 3072) the fit needs about
    ``3 * d^2 * 8`` bytes (225 MB) plus one float64 chunk, whatever n. Measured on CIFAR-10's
    50,000 GCN'd training images (a float32 JAX array) with 2 CPU cores: 36 s, and a peak of
    1.4 GB for the whole process, data included.

    Args:
      images: ``(n, height, width, channels)``, usually after ``global_contrast_normalize``
        (NumPy or JAX; JAX arrays are fetched one chunk at a time).
      bias: added to the covariance's diagonal (``filter_bias``; 0.1 for CIFAR in maxout/NIN).
      chunk_size: rows converted to float64 at a time.

    Returns:
      A ``ZCA`` (float32 mean and whitening matrix) for ``zca_whiten``.

    Example:
      >>> import numpy as np
      >>> from gapjax.data import fit_zca, zca_whiten
      >>> x = np.random.default_rng(0).normal(size=(500, 2, 2, 1)) * [[[1.0], [3.0]]]
      >>> zca = fit_zca(x, bias=0.0)
      >>> y = np.asarray(zca_whiten(x, zca=zca)).reshape(500, 4)
      >>> bool(np.allclose(np.cov(y.T, bias=True), np.eye(4), atol=1e-4))
      True
    """
    images = images if hasattr(images, "shape") else np.asarray(images)
    _check_images(images, "fit_zca")
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"fit_zca: needs at least 2 images, got shape {images.shape}.")
    check_real(bias, "bias", "fit_zca", minimum=0.0)
    check_int(chunk_size, "chunk_size", "fit_zca", minimum=1)
    d = int(np.prod(images.shape[1:]))
    total = np.zeros(d)
    for chunk in _chunks(images, chunk_size):
        total += chunk.sum(0)
    mean = total / n
    cov = np.zeros((d, d))
    for chunk in _chunks(images, chunk_size):
        centered = chunk - mean  # a new array: the chunk may be a view of the caller's data
        cov += centered.T @ centered
    cov /= n
    cov[np.diag_indices(d)] += bias
    eigvals, eigvecs = np.linalg.eigh(cov)
    if eigvals.min() <= 0:
        raise ValueError(
            f"fit_zca: the covariance (+ bias={bias}) is singular (smallest eigenvalue "
            f"{eigvals.min():.3g}); use bias > 0."
        )
    whitening = (eigvecs * eigvals**-0.5) @ eigvecs.T
    return ZCA(jnp.asarray(mean, jnp.float32), jnp.asarray(whitening, jnp.float32))


@jax.jit
def zca_whiten(images: Images, *, zca: ZCA) -> Float[Array, "n height width channels"]:
    """Applies a fitted ZCA transform: ``x' = (x - mean) @ P`` on the flattened images.

    The same transform (fitted on the training split) is applied unchanged to every split. The
    product runs at full float32 precision (``precision="highest"``: no TF32 on GPUs).

    Args:
      images: ``(n, height, width, channels)`` with ``height * width * channels`` equal to the
        transform's number of features.
      zca: from ``fit_zca`` (or ``ZCA.load``).

    Returns:
      float32 whitened images of the same shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax.data import ZCA, zca_whiten
      >>> zca = ZCA(jnp.array([1.0, 1.0]), jnp.array([[2.0, 0.0], [0.0, 0.5]]))
      >>> zca_whiten(jnp.array([3.0, 5.0]).reshape(1, 1, 2, 1), zca=zca).ravel()
      Array([4., 2.], dtype=float32)
    """
    _check_images(images, "zca_whiten")
    d = int(np.prod(images.shape[1:]))
    if zca.mean.shape != (d,) or zca.whitening.shape != (d, d):
        raise ValueError(
            f"zca_whiten: images {images.shape} have {d} features per image, the transform "
            f"mean {zca.mean.shape} and whitening {zca.whitening.shape}."
        )
    x = jnp.asarray(images, jnp.float32).reshape(images.shape[0], d) - zca.mean
    return jnp.matmul(x, zca.whitening, precision=lax.Precision.HIGHEST).reshape(images.shape)


# ------------------------------------------------------------------------------------------
# Local contrast normalization (SVHN)
# ------------------------------------------------------------------------------------------


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """pylearn2's ``gaussian_filter``: exp(-(i^2 + j^2) / (2 sigma^2)) about the center, sum 1."""
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma**2))
    return g / g.sum()


@functools.partial(jax.jit, static_argnames=("kernel_size", "sigma", "threshold"))
def local_contrast_normalize(
    images: Images, *, kernel_size: int = 7, sigma: float = 2.0, threshold: float = 1e-4
) -> Float[Array, "n height width channels"]:
    """LeCun's local contrast normalization, per channel, exactly as pylearn2's ``lecun_lcn``.

    With ``g`` the normalized ``kernel_size x kernel_size`` Gaussian (``sigma=2``) and ``*`` a
    convolution with zero padding ("same" size), for each channel of each image:

    - ``v = x - g * x`` (subtract the Gaussian-weighted local mean);
    - ``s = sqrt(g * x^2)``: note that pylearn2 takes the local second moment of ``x`` itself,
      not of the centered ``v`` (a local RMS rather than a local standard deviation);
    - ``x' = v / max(mean_{h,w}(s), s, threshold)``: divide by the local RMS where it exceeds its
      mean over the image, else by that mean.

    This is what maxout and NIN used on SVHN, with ``kernel_size=7`` after GCN (scale 1).
    Source followed: ``lecun_lcn`` and ``gaussian_filter`` in ``pylearn2/datasets/
    preprocessing.py`` (lisa-lab/pylearn2; "Original code in Theano by: Guillaume Desjardins"),
    whose "full" convolution cropped by ``kernel_size // 2`` on each side equals the zero-padded
    "same" convolution used here.

    Args:
      images: ``(n, height, width, channels)``, any real dtype.
      kernel_size: the Gaussian window's size (odd).
      sigma: the Gaussian's standard deviation in pixels (pylearn2 fixes it at 2).
      threshold: the smallest divisor.

    Returns:
      float32 images of the same shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax.data import local_contrast_normalize
      >>> x = jnp.zeros((1, 9, 9, 1)).at[0, 4, 4, 0].set(1.0)
      >>> y = local_contrast_normalize(x)
      >>> y.shape, y[0, 4, 3:6, 0].tolist()  # doctest: +NUMBER
      ((1, 9, 9, 1), [-0.20, 4.41, -0.20])

    References:
      Jarrett, Kavukcuoglu, Ranzato, LeCun, "What is the best multi-stage architecture for object
      recognition?", ICCV 2009.
    """
    _check_images(images, "local_contrast_normalize")
    check_int(kernel_size, "kernel_size", "local_contrast_normalize", minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"local_contrast_normalize: kernel_size={kernel_size} must be odd.")
    check_real(sigma, "sigma", "local_contrast_normalize", positive=True)
    check_real(threshold, "threshold", "local_contrast_normalize", minimum=0.0)
    x = jnp.asarray(images, jnp.float32)
    c = x.shape[-1]
    g = jnp.asarray(_gaussian_kernel(kernel_size, sigma), jnp.float32)
    kernel = jnp.tile(g[:, :, None, None], (1, 1, 1, c))  # HWIO, one filter per channel

    def blur(v):
        return lax.conv_general_dilated(
            v,
            kernel,
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
            precision=lax.Precision.HIGHEST,
        )

    centered = x - blur(x)
    local = jnp.sqrt(blur(x * x))
    per_image = jnp.mean(local, axis=(1, 2), keepdims=True)
    divisor = jnp.maximum(jnp.maximum(per_image, local), threshold)
    return centered / divisor
