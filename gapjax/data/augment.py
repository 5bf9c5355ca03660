"""On-device data augmentation: random translations (pad and crop) and horizontal flips.

The paper's CIFAR-10 augmentation (NIN, as in maxout): pad 4 zero pixels on each side, take a
random 32x32 crop, and flip it horizontally with probability 0.5, independently for every
example. Apply it after preprocessing (GCN + ZCA) so that the padding is zero in whitened space,
as in the paper.

Everything runs inside ``jax.jit`` as one gather per batch: for every output pixel the source
row and column are computed from the example's offsets and flip bit, and pixels that fall in the
padding are zero. No padded copy of the batch and no Python loop over the batch. Results are a
deterministic function of the key.
"""

import functools
import numbers

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Int, Shaped

from gapjax.data._checks import check_real

__all__ = ["crop_and_flip", "random_crop", "random_crop_flip", "random_flip"]

Images = Shaped[ArrayLike, "n height width channels"]
Key = Shaped[ArrayLike, "..."]
Scalar = float | Shaped[ArrayLike, ""]  # a Python number, or a scalar array (traced under jit)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _pair(value, name: str, fn: str) -> tuple[int, int]:
    try:
        pair = (value, value) if _is_int(value) else tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(not _is_int(v) or v < 0 for v in pair):
        raise ValueError(f"{fn}: {name}={value!r} must be a non-negative int or a pair of them.")
    return int(pair[0]), int(pair[1])


def _geometry(images, padding, crop_size, fn: str) -> tuple[tuple[int, int], tuple[int, int]]:
    if jnp.ndim(images) != 4:
        raise ValueError(
            f"{fn}: images must be (n, height, width, channels), got shape {jnp.shape(images)}."
        )
    _, h, w, _ = jnp.shape(images)
    pad = _pair(padding, "padding", fn)
    crop = (h, w) if crop_size is None else _pair(crop_size, "crop_size", fn)
    if not (0 < crop[0] <= h + 2 * pad[0] and 0 < crop[1] <= w + 2 * pad[1]):
        raise ValueError(
            f"{fn}: crop_size {crop} does not fit in the padded images "
            f"({h + 2 * pad[0]}, {w + 2 * pad[1]}) (images {jnp.shape(images)}, padding {pad})."
        )
    return pad, crop


@functools.partial(jax.jit, static_argnames=("padding", "crop_size"))
def crop_and_flip(
    images: Images,
    offsets: Int[ArrayLike, "n 2"],
    flips: Bool[ArrayLike, " n"],
    *,
    padding: int | tuple[int, int] = 4,
    crop_size: int | tuple[int, int] | None = None,
) -> Shaped[Array, "n crop_height crop_width channels"]:
    """Crops every zero-padded image at its own offset and mirrors the crops marked by ``flips``.

    ``out[i, r, c] = padded[i, offsets[i, 0] + r, offsets[i, 1] + c']`` with
    ``c' = crop_width - 1 - c`` where ``flips[i]`` (a horizontal mirror of the crop), else ``c``;
    ``padded`` is ``images`` with ``padding`` zero rows/columns on each side (never materialized).
    The deterministic core of ``random_crop_flip``.

    Args:
      images: ``(n, height, width, channels)``, any dtype.
      offsets: ``(n, 2)`` ints, the (row, column) of each crop's top-left corner in the padded
        image, in ``[0, height + 2 * pad - crop_height]`` (and likewise for columns).
      flips: ``(n,)`` bools.
      padding: zero pixels added on each side: one int, or (rows, columns).
      crop_size: (height, width) of the crops, or one int for squares; default the input size.

    Returns:
      ``(n, crop_height, crop_width, channels)`` in the input dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax.data import crop_and_flip
      >>> x = jnp.arange(1, 5).reshape(1, 2, 2, 1)
      >>> crop_and_flip(x, jnp.array([[1, 1]]), jnp.array([True]), padding=1)[0, :, :, 0]
      Array([[2, 1],
             [4, 3]], dtype=int32)
      >>> crop_and_flip(x, jnp.array([[0, 0]]), jnp.array([False]), padding=1)[0, :, :, 0]
      Array([[0, 0],
             [0, 1]], dtype=int32)
    """
    pad, crop = _geometry(images, padding, crop_size, "crop_and_flip")
    x = jnp.asarray(images)
    n, h, w, _ = x.shape
    offsets = jnp.asarray(offsets, jnp.int32)
    if offsets.shape != (n, 2) or jnp.shape(flips) != (n,):
        raise ValueError(
            f"crop_and_flip: offsets {offsets.shape} and flips {jnp.shape(flips)} must be "
            f"({n}, 2) and ({n},) for images {x.shape}."
        )
    r = jnp.arange(crop[0])
    c = jnp.arange(crop[1])
    rows = offsets[:, :1] - pad[0] + r  # (n, crop_h), in unpadded coordinates
    cols = offsets[:, 1:] - pad[1] + jnp.where(jnp.asarray(flips)[:, None], crop[1] - 1 - c, c)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    gathered = x[
        jnp.arange(n)[:, None, None],
        jnp.clip(rows, 0, h - 1)[:, :, None],
        jnp.clip(cols, 0, w - 1)[:, None, :],
    ]
    return jnp.where(inside[..., None], gathered, jnp.zeros((), x.dtype))


def _random_offsets(key, n: int, shape, pad, crop):
    h, w = shape
    limits = jnp.array([h + 2 * pad[0] - crop[0] + 1, w + 2 * pad[1] - crop[1] + 1])
    return jax.random.randint(key, (n, 2), 0, limits)


@functools.partial(jax.jit, static_argnames=("padding", "crop_size"))
def random_crop_flip(
    images: Images,
    *,
    key: Key,
    padding: int | tuple[int, int] = 4,
    crop_size: int | tuple[int, int] | None = None,
    flip_prob: Scalar = 0.5,
) -> Shaped[Array, "n crop_height crop_width channels"]:
    """The paper's augmentation: zero-pad, random crop, random horizontal flip, per example.

    Each example gets its own crop offset, uniform over the ``(H + 2p - crop + 1)^2`` positions
    (81 for CIFAR's 32x32 crops of 40x40 padded images), and is mirrored with probability
    ``flip_prob``, independently. The same key gives the same batch.

    Args:
      images: ``(n, height, width, channels)``, any dtype (after preprocessing, so that the
        padding is zero in normalized space).
      key: a ``jax.random`` key; split it per step.
      padding: zero pixels added on each side (int, or (rows, columns)).
      crop_size: the crop's (height, width) or one int; default the input size.
      flip_prob: the probability of a horizontal flip.

    Returns:
      ``(n, crop_height, crop_width, channels)`` in the input dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gapjax.data import random_crop_flip
      >>> x = jnp.ones((8, 32, 32, 3))
      >>> y = random_crop_flip(x, key=jax.random.key(0))
      >>> y.shape, bool(jnp.all(random_crop_flip(x, key=jax.random.key(0)) == y))
      ((8, 32, 32, 3), True)
    """
    pad, crop = _geometry(images, padding, crop_size, "random_crop_flip")
    check_real(flip_prob, "flip_prob", "random_crop_flip", minimum=0.0, maximum=1.0)
    n, h, w, _ = jnp.shape(images)
    k_offsets, k_flips = jax.random.split(key)
    offsets = _random_offsets(k_offsets, n, (h, w), pad, crop)
    flips = jax.random.bernoulli(k_flips, flip_prob, (n,))
    return crop_and_flip(images, offsets, flips, padding=pad, crop_size=crop)


@functools.partial(jax.jit, static_argnames=("padding", "crop_size"))
def random_crop(
    images: Images,
    *,
    key: Key,
    padding: int | tuple[int, int] = 4,
    crop_size: int | tuple[int, int] | None = None,
) -> Shaped[Array, "n crop_height crop_width channels"]:
    """A random translation: zero-pad each side, then crop at a uniform random offset.

    Args:
      images: ``(n, height, width, channels)``, any dtype.
      key: a ``jax.random`` key.
      padding: zero pixels added on each side (int, or (rows, columns)).
      crop_size: the crop's (height, width) or one int; default the input size.

    Returns:
      ``(n, crop_height, crop_width, channels)`` in the input dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gapjax.data import random_crop
      >>> random_crop(jnp.ones((2, 28, 28, 1)), key=jax.random.key(0), padding=2).shape
      (2, 28, 28, 1)
    """
    pad, crop = _geometry(images, padding, crop_size, "random_crop")
    n, h, w, _ = jnp.shape(images)
    offsets = _random_offsets(key, n, (h, w), pad, crop)
    return crop_and_flip(images, offsets, jnp.zeros((n,), bool), padding=pad, crop_size=crop)


@jax.jit
def random_flip(
    images: Images, *, key: Key, flip_prob: Scalar = 0.5
) -> Shaped[Array, "n height width channels"]:
    """Mirrors each image horizontally (reverses its width axis) with probability ``flip_prob``.

    Args:
      images: ``(n, height, width, channels)``, any dtype.
      key: a ``jax.random`` key.
      flip_prob: the probability of a flip, per example.

    Returns:
      The images, some mirrored, same shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gapjax.data import random_flip
      >>> x = jnp.arange(3.0).reshape(1, 1, 3, 1)
      >>> random_flip(x, key=jax.random.key(0), flip_prob=1.0).ravel()
      Array([2., 1., 0.], dtype=float32)
    """
    if jnp.ndim(images) != 4:
        raise ValueError(
            "random_flip: images must be (n, height, width, channels), got shape "
            f"{jnp.shape(images)}."
        )
    x = jnp.asarray(images)
    flips = jax.random.bernoulli(key, flip_prob, (x.shape[0],))
    return jnp.where(flips[:, None, None, None], x[:, :, ::-1], x)
