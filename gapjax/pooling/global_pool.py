"""Global pooling: one value per channel from a whole feature map.

Every function here reduces the spatial axes of ``x`` and shares these keyword-only arguments:

- ``data_format``: "channels_last" (default; ``(batch, *spatial, channels)``) or "channels_first"
  (``(batch, channels, *spatial)``), with 1, 2 or 3 spatial axes.
- ``axis``: explicit axes to pool, overriding ``data_format``: any layout, any number of leading
  axes, unbatched input.
- ``keepdims``: keep the pooled axes with size 1 (a bool: ``'no'`` raises).
- ``mask``: boolean (or 0/1) array; True marks the positions to pool. With ``data_format`` it has
  the shape ``(batch, *spatial)`` or anything that broadcasts to it (right-aligned, NumPy rules),
  or the full shape of ``x`` for a per-channel mask; with ``axis`` it broadcasts against ``x``.
  A concrete numeric mask holding anything but 0 and 1 (0.5, 2, NaN) raises ValueError; a
  traced one (inside your jit) cannot be checked and is read as ``mask != 0``.
- ``fill_value``: the result where every position is masked out (default 0). Never NaN unless
  you ask for it, and never an error inside jit.

Numerics: float16/bfloat16 inputs accumulate in float32 and return their own dtype; integer input
to a mean-like pool returns JAX's default float dtype (max, min and sum keep integer dtypes). A
NaN at an unmasked position makes that output NaN (as in PyTorch); masked positions never leak NaN
or inf into the result or its gradient. Gradients are finite for all-masked rows (zero), also
those of parameters (a mixing weight, p, r). An empty batch or channel axis gives an empty result.

Every function is compiled with ``jax.jit`` (settings such as ``axis``, ``data_format`` and ``k``
are static) and works under ``jax.grad``, ``jax.vmap`` and a user's own ``jax.jit``. Invalid
arguments raise ValueError at trace time, naming the function, the argument and the shapes;
settings of the wrong type (a string for a bool switch, a float or an array for ``axis``) raise
``SettingTypeError``, both a TypeError and a ValueError. NumPy scalars count as Python ones.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Shaped

from gapjax.pooling import _kernels
from gapjax.pooling._common import (
    DATA_FORMATS,
    Layout,
    SettingTypeError,
    accum_dtype,
    any_valid,
    as_array,
    broadcast_sum,
    check_bool,
    check_finite,
    check_positive,
    check_unit_interval,
    fill_doc,
    finish,
    float_dtype,
    highest,
    lowest,
    pooling_function,
    prepare_mask,
    prepare_param,
    prepare_weights,
    propagate_nan,
    resolve_layout,
    safe_divide,
    safe_power,
    safe_root,
)

__all__ = [
    "attention_pool",
    "avgmax_pool",
    "catavgmax_pool",
    "gem_pool",
    "global_avg_pool",
    "global_lp_pool",
    "global_max_pool",
    "global_min_pool",
    "global_stochastic_pool",
    "global_sum_pool",
    "lse_pool",
    "mixed_pool",
    "soft_pool",
    "topk_pool",
    "weighted_avg_pool",
]

_LAYOUT_ARGS = ("axis", "data_format", "keepdims")

Input = Shaped[ArrayLike, "..."]
Mask = Shaped[ArrayLike, "..."] | None
Param = float | Shaped[ArrayLike, "..."]
# Dynamic scalars: Python numbers, or scalar arrays (tracers under jit).
Scalar = float | Shaped[ArrayLike, ""]


# --------------------------------------------------------------------------------------------
# Building blocks shared by the public functions (x already converted, layout resolved).
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Call:
    """One call's resolved inputs, and how to finish its result."""

    x: jax.Array
    layout: Layout
    mask: jax.Array | None
    keepdims: bool
    fill_value: Any

    def done(self, out: jax.Array, *, dtype=None, valid=None, keepdims=None) -> jax.Array:
        """Fills all-masked rows (or rows where ``valid`` is False), casts, applies keepdims.

        ``dtype`` defaults to x's float dtype (mean-like pools).
        """
        return finish(
            out,
            self.layout,
            valid=any_valid(self.mask, self.layout) if valid is None else valid,
            fill_value=self.fill_value,
            dtype=float_dtype(self.x.dtype) if dtype is None else dtype,
            keepdims=self.keepdims if keepdims is None else keepdims,
        )


def _setup(fn: str, x: Any, axis, data_format, keepdims, mask, fill_value) -> _Call:
    """Converts x, resolves the layout and the mask.

    Masked positions of x are replaced by 0 here, before any nonlinearity: a NaN or inf there
    would otherwise leak into gradients (0 * NaN) even though the forward pass ignores it.
    """
    x = as_array(x, fn)
    layout = resolve_layout(x.shape, axis=axis, data_format=data_format, fn=fn)
    mask = prepare_mask(mask, layout, fn)
    if mask is not None:
        x = jnp.where(mask, x, jnp.zeros((), x.dtype))
    return _Call(x, layout, mask, keepdims, fill_value)


def _spatial(kernel, x: jax.Array, layout: Layout) -> jax.Array:
    """``kernel(x, axes)``, or zeros of the pooled shape when x is empty (a size-0 batch or
    channel axis: no output element, so nothing for the kernels to do)."""
    if x.size == 0:
        return jnp.zeros(layout.out_shape, x.dtype)
    return kernel(x, layout.axes)


def _kernel_input(x: jax.Array) -> jax.Array:
    """Floats go to the fast kernels as they are (they accumulate in float32); others are cast."""
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(accum_dtype(x.dtype))


def _sum(x: jax.Array, mask, layout: Layout) -> jax.Array:
    """Sum over the pooled axes in the accumulation dtype."""
    if mask is None:
        return _spatial(_kernels.spatial_sum, _kernel_input(x), layout)
    x = x.astype(accum_dtype(x.dtype))
    return jnp.sum(jnp.where(mask, x, 0), axis=layout.axes)


def _mean(x: jax.Array, mask, layout: Layout) -> jax.Array:
    """Mean over the unmasked positions in the accumulation dtype (0 where none)."""
    if mask is None:
        return _spatial(_kernels.spatial_mean, _kernel_input(x), layout)
    x = x.astype(accum_dtype(x.dtype))
    total = jnp.sum(jnp.where(mask, x, 0), axis=layout.axes)
    return safe_divide(total, broadcast_sum(mask, layout, x.dtype))


def _max_or_zero(x: jax.Array, mask, layout: Layout) -> jax.Array:
    """``_max``, 0 for an all-masked row (its -inf would turn a mixing weight's gradient NaN)."""
    out = _max(x, mask, layout)
    return out if mask is None else jnp.where(any_valid(mask, layout), out, 0)


def _log_mean_exp(z: jax.Array, r: jax.Array, mask, layout: Layout) -> jax.Array:
    """``(1/r) log mean_i exp(r z_i)`` over unmasked positions, for ``z <= 0`` (keepdims r).

    Computed as ``log1p(mean expm1(r z)) / r``, which keeps full precision for small r (log/exp
    would lose about eps / r). Where r is below the smallest normal float (subnormals are
    flushed to zero on CPU) the result is the limit ``mean_i z_i``; large r gives ``max z = 0``.
    """
    small = r < jnp.finfo(z.dtype).tiny
    r_safe = jnp.where(small, 1, r)
    value = jnp.log1p(_mean(jnp.expm1(r_safe * z), mask, layout))
    value = value / jnp.squeeze(r_safe, layout.axes)
    return jnp.where(jnp.squeeze(small, layout.axes), _mean(z, mask, layout), value)


def _max(x: jax.Array, mask, layout: Layout) -> jax.Array:
    """Max over the unmasked positions (masked ones read the lowest value); the gradient goes
    to the first maximum, as PyTorch's."""
    if mask is not None:
        x = jnp.where(mask, x, lowest(x.dtype))
    return _spatial(_kernels.spatial_max, x, layout)


def _min(x: jax.Array, mask, layout: Layout) -> jax.Array:
    if mask is not None:
        x = jnp.where(mask, x, highest(x.dtype))
    return _spatial(_kernels.spatial_min, x, layout)


def _shift(x: jax.Array, mask, layout: Layout) -> jax.Array:
    """The max over unmasked positions (keepdims), 0 where it is not finite; no gradient."""
    m = jnp.expand_dims(_max(x, mask, layout), layout.axes)
    return lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0))


def _scale(magnitude: jax.Array, mask, layout: Layout) -> jax.Array:
    """The largest finite positive magnitude (keepdims; 1 if none), held out of the gradient.

    Power means are homogeneous: ``(mean x^p)^(1/p) = s (mean (x/s)^p)^(1/p)`` for any s > 0, so
    dividing by the maximum keeps ``x^p`` from overflowing (2^200 is inf in float32) without
    changing the value or the gradient.
    """
    s = _shift(magnitude, mask, layout)
    return jnp.where(s > 0, s, 1)


def _at_most_one(x: jax.Array, scale: jax.Array, f) -> jax.Array:
    """``f(x / scale)`` with the value ``f(+-1)`` exact where ``|x| == scale``.

    XLA may divide by multiplying with the reciprocal, which can leave the maximum at
    0.99999994; raised to a huge power that is 0 and the pooled value collapses. The gradient
    keeps the division's.
    """
    ratio = f(x / scale)
    exact = f(jnp.sign(x))
    return jnp.where(jnp.abs(x) == scale, exact + (ratio - lax.stop_gradient(ratio)), ratio)


def _to_sites(v: jax.Array, layout: Layout) -> jax.Array:
    """Moves the pooled axes last and flattens them: ``out_shape + (positions,)``."""
    v = jnp.broadcast_to(v, layout.shape)
    ends = tuple(range(layout.ndim - len(layout.axes), layout.ndim))
    return jnp.moveaxis(v, layout.axes, ends).reshape((*layout.out_shape, layout.size))


def _weighted_mean(x: jax.Array, w: jax.Array, mask, layout: Layout) -> tuple[jax.Array, Any]:
    """sum(w x) / sum(w) over unmasked positions, and where sum(w) != 0."""
    terms = w * x
    if mask is not None:
        terms = jnp.where(mask, terms, 0)
        w = jnp.where(mask, w, 0)
    den = broadcast_sum(w, layout, x.dtype)
    den = jnp.broadcast_to(den, layout.out_shape)
    return safe_divide(jnp.sum(terms, axis=layout.axes), den), den != 0


_SHARED_ARGS = """axis: spatial axes to pool, overriding ``data_format`` (any layout).
    data_format: "channels_last" ``(batch, *spatial, channels)`` or "channels_first"
      ``(batch, channels, *spatial)``; 1-3 spatial axes.
    keepdims: keep the pooled axes with size 1 (a bool).
    mask: True (or 1) marks positions to pool; broadcasts to ``(batch, *spatial)``, or to
      ``x.shape`` for a per-channel mask (with ``axis``: against ``x``); other values raise.
    fill_value: result where every position is masked out."""


def _validate_layout(fn: str, arguments: dict[str, Any]) -> None:
    """The layout settings that need no data (a module checks them when it is built)."""
    if "data_format" in arguments and arguments["data_format"] not in DATA_FORMATS:
        raise ValueError(
            f"{fn}: data_format must be one of {DATA_FORMATS}, got {arguments['data_format']!r}."
        )
    axis = arguments.get("axis")
    if axis is not None and not (
        (isinstance(axis, int) and not isinstance(axis, bool))
        or (
            isinstance(axis, tuple)
            and all(isinstance(a, int) and not isinstance(a, bool) for a in axis)
        )
    ):
        raise SettingTypeError(f"{fn}: axis must be an int or a tuple of ints, got {axis!r}.")


def _api(*static: str, checks=None):
    """Public pooling function: shared docs, jit with the layout arguments static, checks."""

    def decorate(fn):
        return pooling_function(
            static=_LAYOUT_ARGS + static,
            checks={"keepdims": check_bool, **(checks or {})},
            validate=_validate_layout,
        )(fill_doc(fn, shared=_SHARED_ARGS))

    return decorate


# --------------------------------------------------------------------------------------------
# Simple reducers.
# --------------------------------------------------------------------------------------------


@_api()
def global_avg_pool(
    x: Input,
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """Global average pooling (GAP), the head of Network In Network.

    ``y = sum_i m_i x_i / sum_i m_i`` over the spatial positions i of each channel (``m = 1``
    without a mask).

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}

    Returns:
      ``(batch, channels)`` for ``(batch, *spatial, channels)`` input (pooled axes removed), in
      x's float dtype (JAX's default float for integer input).

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import global_avg_pool
      >>> x = jnp.arange(8.0).reshape(1, 2, 2, 2)
      >>> global_avg_pool(x)
      Array([[3., 4.]], dtype=float32)
      >>> global_avg_pool(x, mask=jnp.array([[[True, False], [False, False]]]))
      Array([[0., 1.]], dtype=float32)

    References:
      Lin, Chen, Yan, "Network In Network", ICLR 2014, arXiv:1312.4400.
    """
    call = _setup("global_avg_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    out = _mean(x, mask, layout)
    return call.done(out)


@_api()
def global_sum_pool(
    x: Input,
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Shaped[Array, "..."]:
    """Global sum pooling: ``y = sum_i m_i x_i``.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}

    Returns:
      The pooled sums, pooled axes removed; floats keep their dtype (float16/bfloat16 summed in
      float32), integers sum as ``jnp.sum`` does.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import global_sum_pool
      >>> global_sum_pool(jnp.arange(6.0).reshape(1, 3, 2))
      Array([[6., 9.]], dtype=float32)
    """
    call = _setup("global_sum_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    if jnp.issubdtype(x.dtype, jnp.floating):
        out, dtype = _sum(x, mask, layout), x.dtype
    else:
        out = jnp.sum(x if mask is None else jnp.where(mask, x, 0), axis=layout.axes)
        dtype = out.dtype
    return call.done(out, dtype=dtype)


@_api()
def global_max_pool(
    x: Input,
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Shaped[Array, "..."]:
    """Global max pooling (GMP): ``y = max_i x_i`` over unmasked positions.

    The gradient goes to one winner, as in PyTorch and ``max_pool``: the first maximum in
    row-major order of the pooled positions, or the first NaN (NaN propagates). Split equally
    among ties instead (``jnp.max``'s convention) it would need a tie count and a backward pass
    that reads x again.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}

    Returns:
      The maxima, pooled axes removed, in x's dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import global_max_pool
      >>> x = jnp.array([[[1.0, -2.0], [3.0, -4.0]]])  # (batch=1, length=2, channels=2)
      >>> global_max_pool(x)
      Array([[ 3., -2.]], dtype=float32)
    """
    call = _setup("global_max_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    out = _max(x, mask, layout)
    return call.done(out, dtype=x.dtype)


@_api()
def global_min_pool(
    x: Input,
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Shaped[Array, "..."]:
    """Global min pooling: ``y = min_i x_i`` over unmasked positions (gradient to the first min).

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}

    Returns:
      The minima, pooled axes removed, in x's dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import global_min_pool
      >>> global_min_pool(jnp.array([[[1.0, -2.0], [3.0, -4.0]]]))
      Array([[ 1., -4.]], dtype=float32)
    """
    call = _setup("global_min_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    out = _min(x, mask, layout)
    return call.done(out, dtype=x.dtype)


# --------------------------------------------------------------------------------------------
# Power and exponential means.
# --------------------------------------------------------------------------------------------


@_api(checks={"p": check_positive})
def global_lp_pool(
    x: Input,
    p: Param,
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """Global power-average (LP) pooling, as PyTorch's ``LPPool``: ``y = (sum_i x_i^p)^(1/p)``.

    Like PyTorch, the power is taken of the values themselves, not their absolute values: for
    the p-norm pass ``jnp.abs(x)``. A negative sum (odd p, negative inputs) gives NaN, as in
    PyTorch; a zero sum gives 0 with a finite gradient. Computed as
    ``s (sum (x/s)^p)^(1/p)`` with s the largest magnitude, so, unlike PyTorch, large values
    or large p do not overflow (p = 1e10 gives the max).

    Valid p: finite and > 0 (inf and NaN raise ValueError: use ``global_max_pool`` for the
    limit). For p < 1 the derivative of ``x^p`` at ``x = 0`` is infinite: the gradient there is
    taken as 0. Small p makes the true value grow like ``n^(1/p)`` over n nonzero positions; it
    is inf where that exceeds the dtype's range.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      p: the power, finite and > 0: a scalar or one value per channel (anything that broadcasts
        to the pooled output's shape).
      {shared}

    Returns:
      The pooled values, pooled axes removed, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import global_lp_pool
      >>> global_lp_pool(jnp.array([[[3.0], [4.0]]]), 2.0)
      Array([[5.]], dtype=float32)
    """
    call = _setup("global_lp_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    acc = accum_dtype(x.dtype)
    p = prepare_param(p, layout, arg="p", fn="global_lp_pool", dtype=acc)
    xa = x.astype(acc)
    scale = _scale(jnp.abs(xa), mask, layout)
    ratio = _at_most_one(xa, scale, lambda r: r)
    out = safe_root(_sum(safe_power(ratio, p), mask, layout), jnp.squeeze(p, layout.axes))
    out = out * jnp.squeeze(scale, layout.axes)
    return call.done(out)


@_api(checks={"p": check_positive, "eps": check_positive})
def gem_pool(
    x: Input,
    p: Param = 3.0,
    *,
    eps: Scalar = 1e-6,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """Generalized-mean (GeM) pooling: ``y = (mean_i max(x_i, eps)^p)^(1/p)``.

    ``p = 1`` is average pooling, ``p -> 0`` the geometric mean and ``p -> inf`` max pooling;
    the paper learns p (initialized at 3), per layer or per channel. Computed in the log domain
    as ``s exp((1/p) log mean exp(p log(x/s)))`` with s the maximum (see ``lse_pool``), so large
    p or large activations never overflow and small p keeps its precision: every finite p > 0
    gives the right value (p = 1e10: the max; p = 1e-10: the geometric mean). p = inf and NaN
    raise ValueError (use ``global_max_pool``).

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      p: the power, finite and > 0: a scalar or one value per channel.
      eps: lower clamp of the inputs, finite and > 0 (keeps the power and its gradient finite).
      {shared}

    Returns:
      The pooled values, pooled axes removed, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import gem_pool
      >>> gem_pool(jnp.array([[[1.0], [2.0]]]), p=1.0)
      Array([[1.5]], dtype=float32)

    References:
      Radenovic, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation",
      TPAMI 2018, arXiv:1711.02512.
    """
    call = _setup("gem_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    acc = accum_dtype(x.dtype)
    p = prepare_param(p, layout, arg="p", fn="gem_pool", dtype=acc)
    clamped = jnp.maximum(x.astype(acc), eps)
    scale = _scale(clamped, mask, layout)
    out = jnp.exp(_log_mean_exp(_at_most_one(clamped, scale, jnp.log), p, mask, layout))
    out = out * jnp.squeeze(scale, layout.axes)
    return call.done(out)


@_api(checks={"r": check_positive})
def lse_pool(
    x: Input,
    r: Param,
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """Log-sum-exp pooling: ``y = (1/r) log mean_i exp(r x_i)``.

    Computed stably as ``x_max + (1/r) log1p(mean_i expm1(r (x_i - x_max)))``: large ``r x``
    never overflows, and small ``r`` keeps full precision (``log``/``exp`` would lose about
    ``eps / r``). ``r -> 0`` approaches average pooling, ``r -> inf`` max pooling. Valid r:
    finite and > 0 (inf and NaN raise ValueError); r below the smallest normal float (which
    CPUs flush to zero) gives the limit, the mean.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      r: the sharpness, finite and > 0: a scalar or one value per channel.
      {shared}

    Returns:
      The pooled values, pooled axes removed, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import lse_pool
      >>> lse_pool(jnp.array([[[1000.0], [1000.0]]]), 10.0)  # no overflow
      Array([[1000.]], dtype=float32)

    References:
      Pinheiro, Collobert, "From Image-level to Pixel-level Labeling with Convolutional
      Networks", CVPR 2015, arXiv:1411.6228.
    """
    call = _setup("lse_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    acc = accum_dtype(x.dtype)
    r = prepare_param(r, layout, arg="r", fn="lse_pool", dtype=acc)
    xa = x.astype(acc)
    shift = _shift(xa, mask, layout)
    # An all-masked row gives 0 here; its result is replaced anyway.
    out = jnp.squeeze(shift, layout.axes) + _log_mean_exp(xa - shift, r, mask, layout)
    return call.done(out)


@_api()
def soft_pool(
    x: Input,
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """SoftPool: the softmax-weighted mean ``y = sum_i softmax(x)_i x_i`` of each channel.

    The maximum is subtracted before the exponential (the official CPU code overflows for large
    activations); positions equal to -inf get zero weight.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}

    Returns:
      The pooled values, pooled axes removed, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import soft_pool
      >>> soft_pool(jnp.array([[[0.0], [jnp.log(3.0)]]]))  # weights 1/4, 3/4
      Array([[0.823959]], dtype=float32)

    References:
      Stergiou, Poppe, Kalliatakis, "Refining activation downsampling with SoftPool", ICCV 2021,
      arXiv:2101.00440.
    """
    call = _setup("soft_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    xa = x.astype(accum_dtype(x.dtype))
    e = jnp.exp(xa - _shift(xa, mask, layout))
    terms = jnp.where(e == 0, 0, e * xa)
    if mask is not None:
        terms, e = jnp.where(mask, terms, 0), jnp.where(mask, e, 0)
    out = safe_divide(jnp.sum(terms, axis=layout.axes), jnp.sum(e, axis=layout.axes))
    return call.done(out)


# --------------------------------------------------------------------------------------------
# Order statistics and mixtures.
# --------------------------------------------------------------------------------------------


def _resolve_k(k: Any, n: int, *, arg: str, fn: str, allow_zero: bool) -> tuple[str, int | float]:
    """Validates k: an int is a count in [1 or 0, n], a float a fraction in (0 or [0, 1]."""
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        if hasattr(k, "dtype") and hasattr(k, "shape") and k.shape == ():
            k = k.item()
        else:
            raise ValueError(
                f"{fn}: {arg} must be an int (a count) or a float (a fraction), got {k!r}."
            )
    if isinstance(k, int):
        lo = 0 if allow_zero else 1
        if not lo <= k <= n:
            raise ValueError(
                f"{fn}: {arg}={k} is out of range: as a count it must lie in "
                f"[{lo}, {n}] for {n} pooled positions."
            )
        return "count", k
    if not ((0 <= k <= 1) if allow_zero else (0 < k <= 1)):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(
            f"{fn}: {arg}={k} is out of range: as a fraction (a float) it must lie "
            f"in {interval}; pass an int for a count."
        )
    return "fraction", k


def _k_table(kind: str, k: int | float, n: int, minimum: int) -> np.ndarray:
    """Count used for each possible number of valid positions 0..n (a static lookup table).

    Fractions round half to even as WILDCAT's Python ``round(k * n)``, at least ``minimum``;
    counts are capped at the number of valid positions.
    """
    if kind == "count":
        return np.minimum(k, np.arange(n + 1))
    return np.array([min(max(round(k * i), minimum), i) for i in range(n + 1)])


def _mean_of_first(sorted_v: jax.Array, k_row: jax.Array) -> jax.Array:
    take = jnp.arange(sorted_v.shape[-1]) < k_row[..., None]
    return safe_divide(jnp.sum(jnp.where(take, sorted_v, 0), axis=-1), k_row)


@_api("k", "k_min", "halve", checks={"alpha": check_finite, "halve": check_bool})
def topk_pool(
    x: Input,
    k: int | float,
    *,
    k_min: int | float = 0,
    alpha: Param = 1.0,
    halve: bool = False,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """Top-k pooling, with WILDCAT's optional negative evidence.

    ``y = mean(k largest x_i) + alpha * mean(k_min smallest x_i)`` (the second term only when
    ``k_min > 0``). With ``halve=True`` the sum is divided by 2 whenever ``k_min > 0`` and
    ``alpha != 0``: the convention of the official WILDCAT code, whose paper formula has no
    halving.

    Counts and fractions: an int is a count, a float a fraction of the (unmasked) positions,
    rounded half to even as WILDCAT's ``round(k * n)``; ``k`` is at least 1, ``k_min`` may round
    to 0 (no negative term). With a mask, a count larger than the number of unmasked positions
    of a row uses all of them. ``top-k(k = n, k_min = 0)`` is average pooling.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      k: number (int, 1..n) or fraction (float, (0, 1]) of largest values to average.
      k_min: number (int, 0..n) or fraction (float, [0, 1]) of smallest values; 0 disables it.
      alpha: weight of the smallest values: a scalar or one value per channel.
      halve: divide by 2 as the official WILDCAT code does (see above).
      {shared}

    Returns:
      The pooled values, pooled axes removed, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import topk_pool
      >>> x = jnp.array([[[1.0], [5.0], [2.0], [4.0]]])
      >>> topk_pool(x, 2)  # (5 + 4) / 2
      Array([[4.5]], dtype=float32)
      >>> topk_pool(x, 0.5, k_min=1, alpha=0.5, halve=True)  # (4.5 + 0.5 * 1) / 2
      Array([[2.5]], dtype=float32)

    References:
      Durand, Mordan, Thome, Cord, "WILDCAT: Weakly Supervised Learning of Deep ConvNets for
      Image Classification, Pointwise Localization and Segmentation", CVPR 2017.
    """
    fn = "topk_pool"
    call = _setup(fn, x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    n = layout.size
    k_kind, k_val = _resolve_k(k, n, arg="k", fn=fn, allow_zero=False)
    m_kind, m_val = _resolve_k(k_min, n, arg="k_min", fn=fn, allow_zero=True)
    acc = accum_dtype(x.dtype)
    alpha = jnp.squeeze(prepare_param(alpha, layout, arg="alpha", fn=fn, dtype=acc), layout.axes)
    flat = _to_sites(x.astype(acc), layout)
    top_table = _k_table(k_kind, k_val, n, 1)
    bottom_table = _k_table(m_kind, m_val, n, 0)
    if mask is None:
        k_top, k_bottom = int(top_table[n]), int(bottom_table[n])
        top = jnp.mean(lax.top_k(flat, k_top)[0], axis=-1)
        bottom = -jnp.mean(lax.top_k(-flat, k_bottom)[0], axis=-1) if k_bottom else 0.0
        has_bottom = jnp.asarray(k_bottom > 0)
    else:
        # Per-row counts, at most the table's maximum: top_k to that bound, then a cut.
        valid_flat = _to_sites(mask, layout)
        n_valid = jnp.sum(valid_flat, axis=-1, dtype=jnp.int32)
        top = _mean_of_first(
            lax.top_k(jnp.where(valid_flat, flat, -jnp.inf), int(top_table.max()))[0],
            jnp.asarray(top_table, acc)[n_valid],
        )
        k_bottom_row = jnp.asarray(bottom_table, acc)[n_valid]
        bottom = 0.0
        if bottom_table.max() > 0:
            smallest = lax.top_k(jnp.where(valid_flat, -flat, -jnp.inf), int(bottom_table.max()))
            bottom = -_mean_of_first(smallest[0], k_bottom_row)
        has_bottom = k_bottom_row > 0
    out = top + jnp.where(has_bottom, alpha * bottom, 0)
    if halve:
        out = jnp.where(has_bottom & (alpha != 0), out / 2, out)
    out = propagate_nan(out, x, mask, layout)
    return call.done(out)


@_api(checks={"alpha": check_unit_interval})
def mixed_pool(
    x: Input,
    alpha: Param = 0.5,
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """Mixed max-average pooling: ``y = alpha * max_i x_i + (1 - alpha) * mean_i x_i``.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      alpha: the max weight in [0, 1]: a scalar or one value per channel (learned in the paper;
        a traced value is not range-checked).
      {shared}

    Returns:
      The pooled values, pooled axes removed, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import mixed_pool
      >>> mixed_pool(jnp.array([[[0.0], [4.0]]]), alpha=0.25)  # 0.25 * 4 + 0.75 * 2
      Array([[2.5]], dtype=float32)

    References:
      Lee, Gallagher, Tu, "Generalizing Pooling Functions in Convolutional Neural Networks:
      Mixed, Gated, and Tree", AISTATS 2016, arXiv:1509.08985.
    """
    call = _setup("mixed_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    acc = accum_dtype(x.dtype)
    alpha = jnp.squeeze(
        prepare_param(alpha, layout, arg="alpha", fn="mixed_pool", dtype=acc), layout.axes
    )
    xa = x.astype(acc)
    out = alpha * _max_or_zero(xa, mask, layout) + (1 - alpha) * _mean(xa, mask, layout)
    return call.done(out)


@_api()
def avgmax_pool(
    x: Input,
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """The mean of average and max pooling: ``y = (mean_i x_i + max_i x_i) / 2`` (timm's avgmax).

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}

    Returns:
      The pooled values, pooled axes removed, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import avgmax_pool
      >>> avgmax_pool(jnp.array([[[0.0], [4.0]]]))
      Array([[3.]], dtype=float32)
    """
    call = _setup("avgmax_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    xa = x.astype(accum_dtype(x.dtype))
    out = 0.5 * (_mean(xa, mask, layout) + _max_or_zero(xa, mask, layout))
    return call.done(out)


@_api()
def catavgmax_pool(
    x: Input,
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """Average and max pooling concatenated along the channel axis (timm's catavgmax).

    The result has twice the channels: first the averages, then the maxima. With ``axis``, the
    concatenation is along the last axis that is not pooled.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}

    Returns:
      ``(batch, 2 * channels)`` for ``(batch, *spatial, channels)`` input, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import catavgmax_pool
      >>> catavgmax_pool(jnp.array([[[0.0, 1.0], [4.0, 3.0]]]))
      Array([[2., 2., 4., 3.]], dtype=float32)
    """
    fn = "catavgmax_pool"
    call = _setup(fn, x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    if len(layout.axes) == layout.ndim:
        raise ValueError(
            f"{fn}: axis={axis!r} pools every axis of x of shape {layout.shape}; "
            "at least one axis must remain to concatenate along."
        )
    xa = x.astype(accum_dtype(x.dtype))
    parts = [
        call.done(part, keepdims=True)
        for part in (_mean(xa, mask, layout), _max_or_zero(xa, mask, layout))
    ]
    out = jnp.concatenate(parts, axis=layout.concat_axis)
    return out if keepdims else jnp.squeeze(out, layout.axes)


# --------------------------------------------------------------------------------------------
# Weighted, attention and stochastic pooling.
# --------------------------------------------------------------------------------------------


@_api()
def weighted_avg_pool(
    x: Input,
    weights: Shaped[ArrayLike, "..."],
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """Weighted average pooling: ``y = sum_i w_i x_i / sum_i w_i`` (the core of GWAP).

    The weights are normally non-negative (GWAP passes a learned map through softplus, sigmoid or
    exp); where ``sum_i w_i`` is 0 the result is ``fill_value``. A masked position is excluded
    whatever its weight; a zero weight excludes the value but does not hide a NaN in it.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      weights: one weight per position, shared over channels (``(batch, *spatial)`` or anything
        that broadcasts to it) or per channel (broadcasting to ``x.shape``). Gradients flow to it.
      {shared}

    Returns:
      The pooled values, pooled axes removed, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import weighted_avg_pool
      >>> x = jnp.array([[[2.0], [6.0]]])  # (batch, length, channels)
      >>> weighted_avg_pool(x, jnp.array([[3.0, 1.0]]))  # (3*2 + 1*6) / 4
      Array([[3.]], dtype=float32)

    References:
      Qiu, "Global Weighted Average Pooling Bridges Pixel-level Localization and Image-level
      Classification", 2018, arXiv:1809.08264.
    """
    call = _setup("weighted_avg_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    acc = accum_dtype(x.dtype)
    w = prepare_weights(weights, layout, arg="weights", fn="weighted_avg_pool", dtype=acc)
    out, valid = _weighted_mean(x.astype(acc), w, mask, layout)
    return call.done(out, valid=valid)


@_api()
def attention_pool(
    x: Input,
    scores: Shaped[ArrayLike, "..."],
    *,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """Attention pooling: ``y = sum_i softmax(s)_i x_i``, a softmax over positions of the scores.

    The softmax is taken over the unmasked positions only and computed stably (max subtracted).
    Scores come from a model (a learned query, a 1x1 convolution...): see ``gapjax.nn``.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      scores: one score per position, shared over channels (``(batch, *spatial)``) or per
        channel (broadcasting to ``x.shape``).
      {shared}

    Returns:
      The pooled values, pooled axes removed, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import attention_pool
      >>> x = jnp.array([[[2.0], [6.0]]])
      >>> attention_pool(x, jnp.array([[0.0, 0.0]]))  # equal scores: the mean
      Array([[4.]], dtype=float32)
    """
    call = _setup("attention_pool", x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    acc = accum_dtype(x.dtype)
    s = prepare_weights(scores, layout, arg="scores", fn="attention_pool", dtype=acc)
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    s_max = jnp.max(s, axis=layout.axes, keepdims=True)
    w = jnp.exp(s - lax.stop_gradient(jnp.where(jnp.isfinite(s_max), s_max, 0)))
    out, valid = _weighted_mean(x.astype(acc), w, mask, layout)
    return call.done(out, valid=valid)


def _sample(x: jax.Array, a: jax.Array, key: jax.Array, layout: Layout) -> jax.Array:
    """x at one position per output element, drawn with probability a_l / sum(a).

    Inverse-CDF sampling, as Caffe does: one uniform per output element (``categorical`` would
    draw one Gumbel per position, ``positions`` times more random numbers).
    """
    cdf = jnp.cumsum(_to_sites(a, layout), axis=-1)
    u = jax.random.uniform(key, layout.out_shape, cdf.dtype) * cdf[..., -1]
    idx = jnp.sum(cdf <= u[..., None], axis=-1)
    # Rounding can put u at the very top: never step past the last position with a > 0.
    last = layout.size - 1 - jnp.argmax(jnp.flip(_to_sites(a > 0, layout), -1), axis=-1)
    idx = jnp.minimum(idx, last)
    return jnp.take_along_axis(_to_sites(x, layout), idx[..., None], axis=-1)[..., 0]


@_api("train", checks={"train": check_bool})
def global_stochastic_pool(
    x: Input,
    *,
    key: jax.Array | None = None,
    train: bool,
    axis: int | tuple[int, ...] | None = None,
    data_format: str = "channels_last",
    keepdims: bool = False,
    mask: Mask = None,
    fill_value: Scalar = 0.0,
) -> Float[Array, "..."]:
    """Global stochastic pooling (Zeiler & Fergus), with explicit randomness.

    With ``a_i = max(x_i, 0)`` (the method assumes non-negative activations, e.g. after a ReLU):

    - ``train=True``: for each output element, sample a position l with probability
      ``a_l / sum_i a_i`` using ``key`` and return ``x_l`` (its gradient goes to that position);
    - ``train=False``: the probability-weighted mean ``sum_i a_i^2 / sum_i a_i``.

    Where every unmasked ``a_i`` is 0 the result is 0 (Caffe's convention); where every position
    is masked out, ``fill_value``.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      key: a PRNG key (``jax.random.key`` or ``PRNGKey``); required when ``train=True``. Each output
        element draws independently.
      train: sample (True) or take the expectation (False). Static: a bool.
      {shared}

    Returns:
      The pooled values, pooled axes removed, in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import global_stochastic_pool
      >>> x = jnp.array([[[1.0], [3.0]]])
      >>> global_stochastic_pool(x, train=False)  # (1 + 9) / 4
      Array([[2.5]], dtype=float32)

    References:
      Zeiler, Fergus, "Stochastic Pooling for Regularization of Deep Convolutional Neural
      Networks", ICLR 2013, arXiv:1301.3557.
    """
    fn = "global_stochastic_pool"
    call = _setup(fn, x, axis, data_format, keepdims, mask, fill_value)
    x, layout, mask = call.x, call.layout, call.mask
    if train and key is None:
        raise ValueError(f"{fn}: train=True samples positions and needs key=jax.random.key(...).")
    xa = x.astype(accum_dtype(x.dtype))
    a = jnp.maximum(xa, 0)
    if mask is not None:
        a = jnp.where(mask, a, 0)
    total = jnp.sum(a, axis=layout.axes)
    if train:
        out = jnp.where(total > 0, _sample(xa, lax.stop_gradient(a), key, layout), 0)
    else:
        out = safe_divide(jnp.sum(a * a, axis=layout.axes), total)
    out = propagate_nan(out, x, mask, layout)
    return call.done(out)
