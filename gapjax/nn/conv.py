"""Convolutions that XLA:CPU runs fast: ``conv_general_dilated`` and ``Conv``.

On CPU, XLA (jaxlib 0.10) runs some convolutions far below the speed of a matrix product of
the same size: a 1x1 convolution's forward pass and gradients, and a k x k convolution on an
image's few channels. Those made NIN train several times slower than PyTorch. Here, on CPU
only, a channels-last convolution takes the formulation that measured fastest
(``benchmarks/conv_cpu.py``, results in ``benchmarks/results/``):

- 1x1 kernels are what they are, a matrix product over the channel axis, forward and both
  gradients (a ``jax.custom_vjp``; strides and padding are slices of the input);
- k x k kernels on at most 16 input channels (an image's) are im2col (the shifted views of the
  padded input concatenated on the channel axis) times the kernel, forward and both gradients
  from the same patches;
- 3x3 and 5x5 kernels (and mixed 3x5, 5x3) at stride 1 on wider float32 2-D inputs are
  Winograd's F(4 x 4, r x r) (``_winograd``): 4x (3x3) and 6.25x (5x5) fewer multiplications,
  forward and both gradients, within about 1e-5 of the direct sum's scale;
- other k x k kernels on wider inputs keep XLA's convolution, which there beats im2col (writing
  the patches costs more than the products save).

Weight gradients contract over every (batch x position) row, which XLA:CPU runs on one core at
a time as a single product; they are split into a few independent batched products, one per
core and then some. Other backends (GPU, TPU) keep ``lax.conv_general_dilated`` (cuDNN),
chosen at lowering time by ``lax.platform_dependent``; so do the layouts and options the CPU
formulations do not cover (channels first, dilation, feature groups). The results are those
of ``lax.conv_general_dilated`` up to float rounding (the sums run in another order).
"""

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Shaped

from gapjax.nn import _winograd

__all__ = ["Conv", "conv_general_dilated"]

# The weight gradient's contraction over (batch x positions) rows is split into this many
# independent products (one per core and then some); fewer when the rows do not divide.
_DW_GROUPS = (8, 4, 2)
_DW_MIN_ROWS = 512  # rows per group below which one product is as good
# k x k kernels on inputs with at most this many channels (an image's) are im2col + products,
# forward and gradients; wider inputs keep XLA's convolution (see _cpu).
_IM2COL_MAX_IN = 16


def conv_general_dilated(
    lhs: Shaped[ArrayLike, "..."],
    rhs: Shaped[ArrayLike, "..."],
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> Shaped[Array, "..."]:
    """``lax.conv_general_dilated``, computed on CPU with matrix products where XLA's is slow.

    ``out[b, p, o] = sum_{t, c} x_pad[b, s * p + t, c] * kernel[t, c, o]`` over the kernel taps
    ``t`` and input channels ``c`` (a cross-correlation, as in ``lax``). Same arguments and
    result as ``lax.conv_general_dilated``, so it can be handed to ``nnx.Conv`` as its
    ``conv_general_dilated``. On CPU, channels-last inputs (``lhs`` ``(batch, *spatial, in)``,
    ``rhs`` ``(*kernel, in, out)``) without dilation or feature groups take matrix products
    where they measured faster (1x1 kernels, and k x k kernels on at most 16 input channels:
    forward and both gradients), and float32 stride-1 3x3 and 5x5 kernels on wider 2-D inputs
    as Winograd's minimal filtering (see the module docstring); everything else, and every
    other backend, is ``lax.conv_general_dilated`` itself.

    Args:
      lhs: the input, ``(batch, *spatial, in)`` for the fast path.
      rhs: the kernel, ``(*kernel, in, out)`` for the fast path.
      window_strides: one stride per spatial axis.
      padding: "SAME", "SAME_LOWER", "VALID", or one ``(lo, hi)`` pair per spatial axis.
      lhs_dilation: input dilation (fast path: none).
      rhs_dilation: kernel dilation (fast path: none).
      dimension_numbers: as in ``lax`` (e.g. ``("NHWC", "HWIO", "NHWC")``); the fast path
        needs channels last, which is what ``nnx.Conv`` passes.
      feature_group_count: as in ``lax`` (fast path: 1).
      batch_group_count: as in ``lax`` (fast path: 1).
      precision: as in ``lax``; passed to the products.
      preferred_element_type: as in ``lax``; the products' accumulation and result type.
      out_sharding: as in ``lax`` (fast path: None).

    Returns:
      ``(batch, *spatial_out, out)`` for channels-last inputs: what ``lax`` returns.

    Example:
      >>> import jax.numpy as jnp
      >>> from jax import lax
      >>> from gapjax import nn
      >>> x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
      >>> dn = ("NHWC", "HWIO", "NHWC")
      >>> y = nn.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)
      >>> y.shape, float(y[0, 0, 0, 0]), float(y[0, 4, 4, 0])
      ((2, 8, 8, 4), 12.0, 27.0)
      >>> bool(jnp.allclose(y, lax.conv_general_dilated(x, k, (1, 1), "SAME",
      ...                                                dimension_numbers=dn)))
      True

    References:
      Chellapilla, Puri, Simard, "High Performance Convolutional Neural Networks for Document
      Processing", IWFHR 2006 (convolution as unrolled patches times a matrix).
      Lavin, Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016,
      arXiv:1509.09308 (Winograd's minimal filtering for 3x3 and 5x5 kernels).
    """
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    kwargs = dict(
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
        out_sharding=out_sharding,
    )
    if _plan(lhs, rhs, **kwargs) is None:
        return _default(lhs, rhs, **kwargs)
    return lax.platform_dependent(
        lhs,
        rhs,
        cpu=functools.partial(_cpu, **kwargs),
        default=functools.partial(_default, **kwargs),
    )


def _default(lhs: jax.Array, rhs: jax.Array, *, out_sharding: Any = None, **kwargs) -> jax.Array:
    """XLA's own convolution (every backend but CPU, and what the CPU path does not cover)."""
    if out_sharding is not None:
        kwargs["out_sharding"] = out_sharding
    return lax.conv_general_dilated(lhs, rhs, **kwargs)


def _cpu(lhs: jax.Array, rhs: jax.Array, **kwargs) -> jax.Array:
    """The CPU formulation, whatever the platform (for CPU, and for the tests).

    Chosen by what measured fastest on XLA:CPU (``benchmarks/conv_cpu.py``): 1x1 kernels are
    matrix products, forward and both gradients (XLA's convolution is much slower there);
    k x k kernels on few input channels (an image's) are im2col + products, forward and both
    gradients (XLA's forward and weight gradient are slower there);
    stride-1 3x3 and 5x5 float32 kernels on wider 2-D inputs are Winograd's F(4 x 4, r x r),
    forward and both gradients (``_winograd``; faster than XLA's convolution there);
    other k x k kernels on wider inputs are XLA's convolution, forward and gradients, which beat
    the im2col formulation there (the patches cost more to write than the products they save).
    """
    plan = _plan(lhs, rhs, **kwargs)
    if plan is None:
        raise ValueError(
            f"conv_general_dilated: no matrix-product path for lhs {lhs.shape}, rhs "
            f"{rhs.shape} and {kwargs}."
        )
    strides, pads = plan
    precision, preferred = kwargs.get("precision"), kwargs.get("preferred_element_type")
    if _winograd_applies(lhs, rhs, strides, precision, preferred):
        return _winograd.conv2d(lhs, rhs, pads)
    if all(k == 1 for k in rhs.shape[:-2]) or lhs.shape[-1] <= _IM2COL_MAX_IN:
        return _conv_cpu(
            lhs,
            rhs,
            strides=strides,
            pads=pads,
            precision=precision,
            preferred_element_type=preferred,
        )
    return _default(lhs, rhs, **kwargs)


def _winograd_applies(lhs, rhs, strides, precision, preferred) -> bool:
    """Whether the convolution takes Winograd's F(4 x 4, r x r) (``_winograd``): float32, 2-D,
    stride 1, kernels of 3 or 5 on each axis, more than ``_IM2COL_MAX_IN`` input channels, at
    the default precision (the transforms round differently from a direct sum; a request for
    higher precision keeps XLA's convolution)."""
    return (
        lhs.ndim == 4
        and lhs.dtype == jnp.float32
        and rhs.dtype == jnp.float32
        and preferred in (None, jnp.float32)
        and precision in (None, lax.Precision.DEFAULT)
        and strides == (1, 1)
        and all(k in _winograd.KERNEL_SIZES for k in rhs.shape[:2])
        and lhs.shape[-1] > _IM2COL_MAX_IN
    )


def _plan(
    lhs: jax.Array,
    rhs: jax.Array,
    *,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    out_sharding: Any = None,
    **_: Any,
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]] | None:
    """(strides, per-axis (lo, hi) pads) when the matrix-product path applies, else None."""
    strides, lhs_dil, rhs_dil, dn = window_strides, lhs_dilation, rhs_dilation, dimension_numbers
    fgc, bgc = feature_group_count, batch_group_count
    n = lhs.ndim - 2
    if n < 1 or rhs.ndim != lhs.ndim or fgc != 1 or bgc != 1 or out_sharding is not None:
        return None
    if any(d != 1 for d in (lhs_dil or ())) or any(d != 1 for d in (rhs_dil or ())):
        return None
    if dn is None:
        return None  # lax's default is channels first (NCHW, OIHW)
    spec = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dn)
    last = (0, n + 1, *range(1, n + 1))
    if spec.lhs_spec != last or spec.out_spec != last:
        return None
    if spec.rhs_spec != (n + 1, n, *range(n)):
        return None
    if not (jnp.issubdtype(lhs.dtype, jnp.floating) and jnp.issubdtype(rhs.dtype, jnp.floating)):
        return None
    strides = tuple(int(s) for s in strides)
    window = rhs.shape[:n]
    if len(strides) != n or rhs.shape[-2] != lhs.shape[-1]:
        return None  # lax raises its own error
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:-1], window, strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if len(pads) != n:
        return None
    outs = [
        (size + lo + hi - k) // s + 1
        for size, (lo, hi), k, s in zip(lhs.shape[1:-1], pads, window, strides, strict=True)
    ]
    if min(outs) <= 0 or lhs.shape[0] == 0 or min(window) <= 0:
        return None
    return strides, pads


def _conv_cpu(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
    precision: Any,
    preferred_element_type: Any,
) -> jax.Array:
    """The channels-last convolution as im2col + one matrix product (1x1: the product alone)."""
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    return _conv_mm(
        x.astype(dtype),
        kernel.astype(dtype),
        x.shape,
        strides,
        pads,
        precision,
        preferred_element_type,
    )


def _geometry(x_shape, kernel_shape, strides, pads):
    """(output sizes, row groups) of the convolution."""
    outs = tuple(
        (x_shape[1 + d] + lo + hi - kernel_shape[d]) // strides[d] + 1
        for d, (lo, hi) in enumerate(pads)
    )
    rows = x_shape[0] * math.prod(outs)
    groups = next((g for g in _DW_GROUPS if rows % g == 0 and rows // g >= _DW_MIN_ROWS), 1)
    return outs, groups


def _im2col(x, kernel_shape, strides, pads):
    """The patches, ``(groups, rows, taps * in)``, features ordered (tap, channel) with the taps
    in row-major order of the kernel window: the order of ``kernel.reshape(-1, out)``."""
    n = x.ndim - 2
    window = kernel_shape[:n]
    outs, groups = _geometry(x.shape, kernel_shape, strides, pads)
    if any(lo or hi for lo, hi in pads):
        config = [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads], (0, 0, 0)]
        x = lax.pad(x, jnp.zeros((), x.dtype), config)
    batch, channels = x.shape[0], x.shape[-1]
    taps = []
    for offset in itertools.product(*(range(k) for k in window)):
        limit = tuple(o + (m - 1) * s + 1 for o, m, s in zip(offset, outs, strides, strict=True))
        taps.append(lax.slice(x, (0, *offset, 0), (batch, *limit, channels), (1, *strides, 1)))
    cols = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    rows = batch * math.prod(outs)
    return cols.reshape(groups, rows // groups, len(taps) * channels)


def _col2im(dcols, x_shape, kernel_shape, strides, pads):
    """The transpose of ``_im2col``: each tap's columns added back where they were read from.

    XLA's own transpose of the slices and the concatenation (a sum of padded slices); written
    by hand, one axis at a time or with in-place updates, it ran slower.
    """
    im2col = functools.partial(_im2col, kernel_shape=kernel_shape, strides=strides, pads=pads)
    (dx,) = jax.linear_transpose(im2col, jax.ShapeDtypeStruct(x_shape, dcols.dtype))(dcols)
    return dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_mm(x, kernel, x_shape, strides, pads, precision, preferred):
    return _conv_mm_fwd(x, kernel, x_shape, strides, pads, precision, preferred)[0]


def _conv_mm_fwd(x, kernel, x_shape, strides, pads, precision, preferred):
    outs, _ = _geometry(x.shape, kernel.shape, strides, pads)
    cols = _im2col(x, kernel.shape, strides, pads)
    y = lax.dot_general(
        cols,
        kernel.reshape(-1, kernel.shape[-1]),
        (((2,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred,
    )
    return y.reshape(x.shape[0], *outs, kernel.shape[-1]), (cols, kernel)


def _conv_mm_bwd(x_shape, strides, pads, precision, preferred, res, g):
    cols, kernel = res
    if preferred is not None:
        g = g.astype(kernel.dtype)
    g = g.reshape(*cols.shape[:2], kernel.shape[-1])
    w = kernel.reshape(-1, kernel.shape[-1])
    # dcols = g @ w.T, contracting both on their last axis (no transposed copy of w).
    dcols = lax.dot_general(g, w, (((2,), (1,)), ((), ())), precision=precision)
    dx = _col2im(dcols, x_shape, kernel.shape, strides, pads)
    return dx.astype(cols.dtype), _weight_gradient(cols, g, kernel, precision)


def _weight_gradient(cols, g, kernel, precision):
    """``cols.T @ g`` as the kernel's gradient (g already grouped as cols' rows).

    A contraction over every row: as one product XLA:CPU runs it on one core at a time, so one
    product per row group (batched), then a small sum over the groups, accumulated in float32
    for 16-bit inputs.
    """
    acc = jnp.float32 if jnp.dtype(kernel.dtype).itemsize < 4 else kernel.dtype
    dw = lax.dot_general(
        cols, g, (((1,), (1,)), ((0,), (0,))), precision=precision, preferred_element_type=acc
    )
    return dw.sum(0).astype(kernel.dtype).reshape(kernel.shape)


_conv_mm.defvjp(_conv_mm_fwd, _conv_mm_bwd)


class Conv(nnx.Conv):
    """``flax.nnx.Conv`` whose convolution XLA:CPU runs fast, forward and both gradients.

    A drop-in for ``nnx.Conv``: the same constructor arguments, the same parameters (``kernel``
    ``(*kernel_size, in_features // feature_group_count, out_features)`` and ``bias``), the
    same initialization and results; ``nnx.Conv`` state loads into it and back. Only the
    convolution differs: this module's ``conv_general_dilated``, which on CPU computes 1x1
    convolutions and k x k convolutions on few channels (forward and gradients) as matrix
    products and stride-1 3x3/5x5 float32 convolutions on wider inputs by Winograd's
    transforms, and elsewhere is ``lax.conv_general_dilated``.

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_size: an int or one size per spatial axis.
      strides: an int or one per spatial axis.
      **kwargs: every other ``nnx.Conv`` argument (padding, dtype, param_dtype, kernel_init,
        bias_init, use_bias, precision, rngs, ...). ``conv_general_dilated`` defaults to this
        module's.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gapjax import nn
      >>> conv = nn.Conv(3, 16, (5, 5), padding=2, rngs=nnx.Rngs(0))
      >>> conv(jnp.ones((4, 32, 32, 3))).shape
      (4, 32, 32, 16)
      >>> reference = nnx.Conv(3, 16, (5, 5), padding=2, rngs=nnx.Rngs(0))
      >>> bool(jnp.allclose(conv.kernel[...], reference.kernel[...]))
      True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        **kwargs: Any,
    ):
        kwargs.setdefault("conv_general_dilated", conv_general_dilated)
        super().__init__(in_features, out_features, kernel_size, strides, **kwargs)

    def __call__(
        self, inputs: Shaped[ArrayLike, "*batch channels"], out_sharding: Any = None
    ) -> Float[Array, "..."]:
        """Applies the convolution (``nnx.Conv.__call__``).

        Returns:
          ``(*batch, *spatial_out, out_features)``.
        """
        return super().__call__(inputs, out_sharding=out_sharding)
