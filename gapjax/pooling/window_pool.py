"""Windowed pooling with PyTorch's, Caffe's and Keras' exact semantics.

Every function here slides a window over the spatial axes of ``x`` and shares these arguments:

- ``kernel_size``: an int (every spatial axis; x is then ``(batch, *spatial, channels)`` or
  ``(batch, channels, *spatial)`` with 1-3 spatial axes) or a tuple with one entry per spatial
  axis, in which case x may have any number of leading axes (or none: unbatched input).
- ``stride``: defaults to ``kernel_size``, as in PyTorch and Keras. Caffe, Flax and MATLAB
  default to 1: pass ``stride=1`` to port from them.
- ``padding``: an int, one int per axis, one ``(lo, hi)`` pair per axis, "valid" (none) or
  "same" (Keras/TF: output ``ceil(L / stride)``, the extra padding cell on the high side).
  Max/min pooling pad with -inf/+inf, average pooling with zeros.
- ``ceil_mode``: round the output length up. None (default) means the convention's default:
  False for PyTorch, True for Caffe (its ``round_mode: CEIL``).
- ``convention``: whose output-length rule to follow with numeric padding. "pytorch":
  ``floor((L + 2p - d(k-1) - 1 [+ s-1 in ceil mode]) / s) + 1``, minus one if the last window
  would start in the right padding (ceil mode only). "caffe": ``ceil((L + 2p - k) / s) + 1``,
  minus one under the same condition but only when there is padding. NIN's 3x3/2 pools need
  Caffe's rule (32 -> 16 -> 8; PyTorch's floor gives 15 -> 7).
- ``data_format``: "channels_last" (default) or "channels_first".

Numerics: float16/bfloat16 averages and powers accumulate in float32 and return the input dtype;
max/min are exact in every dtype and keep integer dtypes. NaN in a window propagates (PyTorch,
XLA); max/min pooling send the gradient to one winner per window: the first maximum in
row-major window order, or the last NaN (PyTorch's scan). Impossible geometry (a kernel larger
than the padded input, padding beyond half the kernel where PyTorch forbids it, non-positive
sizes, windows that read only padding, which PyTorch refuses; Caffe's rule keeps its ceil-mode
empty windows) raises ValueError at trace time, naming the function, the argument and the sizes;
sizes that are not ints (floats, bools, arrays) and switches that are not bools raise
``SettingTypeError`` (a TypeError and a ValueError). NumPy integers count as ints. Kernel taps
that read padding in every window are dropped, so a kernel far larger than x costs no more than
one as large as x. A size-0 batch or channel axis gives an empty result (and zero gradient).
Windowed pools take no mask.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Int, Shaped

from gapjax.pooling._common import (
    DATA_FORMATS,
    SettingTypeError,
    accum_dtype,
    as_array,
    check_bool,
    check_optional_bool,
    check_positive,
    fill_doc,
    float_dtype,
    pooling_function,
    safe_divide,
    safe_power,
    safe_root,
)
from gapjax.pooling._windows import (
    AxisWindows,
    Stage,
    check_convention,
    grid_product,
    parse_padding,
    per_axis,
    spatial_axes,
    spatial_rank,
    stages,
    window_extreme,
    window_sum,
    windowed_plan,
)

__all__ = [
    "avg_pool",
    "lp_pool",
    "max_pool",
    "max_unpool",
    "min_pool",
    "stochastic_pool",
]

Input = Shaped[ArrayLike, "..."]
Size = int | tuple[int, ...]
Padding = int | str | tuple[int | tuple[int, int], ...]

_GEOMETRY = ("kernel_size", "stride", "padding", "ceil_mode", "convention")
_STATIC = (*_GEOMETRY, "data_format")

_SHARED_ARGS = """kernel_size: window size, an int or one int per spatial axis.
    stride: window step; default ``kernel_size`` (PyTorch, Keras). Caffe and Flax default to 1.
    padding: int, one int per axis, one ``(lo, hi)`` pair per axis, "valid" or "same".
    ceil_mode: round the output length up; None: the convention's default (PyTorch False,
      Caffe True).
    convention: "pytorch" or "caffe": the output-length rule for numeric padding.
    data_format: "channels_last" ``(..., *spatial, channels)`` or "channels_first"
      ``(..., channels, *spatial)``."""


_MAX_DOC_RETURNS = """Returns:
      The pooled values ``(..., *out_spatial, channels)`` (or channels first) in x's dtype; with
      ``return_indices=True``, also the int32 flat index of each winner into x's spatial
      positions (row-major: ``h * W + w`` in 2-D, as PyTorch), -1 for an empty window (only
      Caffe's ceil rule makes one)."""


def _rank(value: Any) -> int:
    """How many spatial axes a size setting names (1 for an int: checked per entry)."""
    return len(value) if isinstance(value, tuple) else 1


def validate_settings(fn: str, arguments: dict[str, Any]) -> None:
    """The window settings that need no data: sizes >= 1, padding >= 0, known names.

    Runs before every call and when a module is built (``nn.MaxPool(0)`` fails there).
    """
    for arg in ("kernel_size", "stride", "dilation"):
        value = arguments.get(arg)
        if value is not None and _rank(value) <= 3:  # more entries: the call names x's rank
            per_axis(value, _rank(value), arg=arg, fn=fn, minimum=1)
    padding = arguments.get("padding")
    if padding is not None:
        parse_padding(padding, 1 if isinstance(padding, str) else _rank(padding), fn)
    if "convention" in arguments:
        check_convention(arguments["convention"], fn)
    if "data_format" in arguments and arguments["data_format"] not in DATA_FORMATS:
        raise ValueError(
            f"{fn}: data_format must be one of {DATA_FORMATS}, got {arguments['data_format']!r}."
        )
    divisor = arguments.get("divisor_override")
    if divisor is not None and (
        isinstance(divisor, bool) or not isinstance(divisor, int) or divisor <= 0
    ):
        raise SettingTypeError(f"{fn}: divisor_override must be a positive int, got {divisor!r}.")


def _api(*static: str, checks=None):
    def decorate(fn):
        return pooling_function(
            static=_STATIC + static,
            checks={"ceil_mode": check_optional_bool, **(checks or {})},
            validate=validate_settings,
        )(fill_doc(fn, shared=_SHARED_ARGS, returns=_MAX_DOC_RETURNS))

    return decorate


def empty_result(x: jax.Array, axes: tuple[int, ...], outs: Any, dtype: Any) -> jax.Array | None:
    """Zeros of the output's shape when x has no elements (a size-0 batch or channel axis).

    The tap engine is never reached with an empty array; the gradient is zeros of x's shape.
    """
    if x.size:
        return None
    shape = list(x.shape)
    for a, n in zip(axes, outs, strict=True):
        shape[a] = n
    return jnp.zeros(shape, dtype)


def _setup(
    fn: str,
    x: Any,
    kernel_size,
    stride,
    padding,
    dilation,
    ceil_mode,
    convention,
    data_format,
) -> tuple[jax.Array, tuple[int, ...], list[AxisWindows]]:
    """Converts x and resolves the geometry: (x, pooled axes, their windows)."""
    x = as_array(x, fn)
    check_convention(convention, fn)
    n = spatial_rank(x.ndim, kernel_size, arg="kernel_size", fn=fn, data_format=data_format)
    axes = spatial_axes(x.ndim, n, data_format)
    kernel = per_axis(kernel_size, n, arg="kernel_size", fn=fn, minimum=1)
    stride = kernel if stride is None else per_axis(stride, n, arg="stride", fn=fn, minimum=1)
    dilation = per_axis(dilation, n, arg="dilation", fn=fn, minimum=1)
    padding = parse_padding(padding, n, fn)
    if isinstance(padding, str):
        if convention == "caffe":
            raise ValueError(
                f"{fn}: padding={padding!r} is Keras/TF's; Caffe pads explicitly: pass ints with "
                "convention='caffe'."
            )
        if ceil_mode:
            raise ValueError(
                f"{fn}: ceil_mode=True applies to numeric padding; padding={padding!r} fixes the "
                "output length itself."
            )
    if convention == "caffe" and any(d != 1 for d in dilation):
        raise ValueError(f"{fn}: Caffe's pooling has no dilation; got dilation={dilation}.")
    if ceil_mode is None:
        ceil_mode = convention == "caffe"
    windows = windowed_plan(
        x.shape,
        axes,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=bool(ceil_mode),
        convention=convention,
        fn=fn,
    )
    return x, axes, windows


# --------------------------------------------------------------------------------------------
# Average and power pooling.
# --------------------------------------------------------------------------------------------


@_api("count_include_pad", "divisor_override", checks={"count_include_pad": check_optional_bool})
def avg_pool(
    x: Input,
    kernel_size: Size,
    *,
    stride: Size | None = None,
    padding: Padding = 0,
    ceil_mode: bool | None = None,
    count_include_pad: bool | None = None,
    divisor_override: int | None = None,
    convention: str = "pytorch",
    data_format: str = "channels_last",
) -> Float[Array, "..."]:
    """Average pooling over sliding windows (PyTorch's ``avg_pool1d/2d/3d``, Caffe's AVE).

    ``y = sum_{cells in the window and in x} x / divisor``. The divisor, per window:

    - ``count_include_pad=True`` (the default with numeric padding: PyTorch and Caffe): the
      window's cells inside ``[-pad_lo, L + pad_hi)`` on every axis, so explicit padding counts
      but a ceil-mode overhang beyond it does not;
    - ``count_include_pad=False`` (the default with "same": Keras/TF): the cells inside x;
    - ``divisor_override``: that number for every window (PyTorch).

    A window with no cell at all (only Caffe's rule makes one: L=6, k=1, s=2 gives 4 outputs)
    averages to 0; Caffe itself computes 0/0 there.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}
      count_include_pad: whether padding cells count in the divisor; None: True for numeric
        padding, False for "same"/"valid".
      divisor_override: a positive int dividing every window's sum instead.

    Returns:
      ``(..., *out_spatial, channels)`` (or channels first), in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import avg_pool
      >>> x = jnp.arange(6.0).reshape(1, 6, 1)  # (batch, length, channels)
      >>> avg_pool(x, 2)[..., 0]
      Array([[0.5, 2.5, 4.5]], dtype=float32)
      >>> avg_pool(x, 2, padding=1, ceil_mode=True)[..., 0]  # the last window: 5 / 2
      Array([[0. , 1.5, 3.5, 2.5]], dtype=float32)
    """
    fn = "avg_pool"
    x, axes, windows = _setup(
        fn, x, kernel_size, stride, padding, 1, ceil_mode, convention, data_format
    )
    if count_include_pad is None:
        count_include_pad = not isinstance(padding, str)
    empty = empty_result(x, axes, [w.out for w in windows], float_dtype(x.dtype))
    if empty is not None:
        return empty
    acc = accum_dtype(x.dtype)
    plan = stages(axes, windows)
    if divisor_override is not None:
        out = window_sum(x.astype(acc), plan) / divisor_override
    else:
        counts = [w.inside if count_include_pad else w.valid_counts() for w in windows]
        divisor = grid_product(axes, counts, x.ndim)
        if (divisor > 0).all():
            out = window_sum(x.astype(acc), plan, scale=1.0 / divisor)
        else:
            out = safe_divide(window_sum(x.astype(acc), plan), jnp.asarray(divisor, acc))
    return out.astype(float_dtype(x.dtype))


@_api(checks={"p": check_positive})
def lp_pool(
    x: Input,
    p: float | Shaped[ArrayLike, ""],
    kernel_size: Size,
    *,
    stride: Size | None = None,
    padding: Padding = 0,
    ceil_mode: bool | None = None,
    convention: str = "pytorch",
    data_format: str = "channels_last",
) -> Float[Array, "..."]:
    """Power-average pooling over sliding windows, PyTorch's ``lp_pool1d/2d/3d``.

    ``y = (sum_window x^p)^(1/p)``, the power of the values themselves (pass ``jnp.abs(x)`` for
    the p-norm). A negative sum gives NaN and a zero sum 0 (finite gradient), as in PyTorch;
    p must be finite and > 0, and for p < 1 the gradient at ``x = 0`` (where the derivative of
    ``x^p`` is infinite) is taken as 0. Like PyTorch's, ``x^p`` itself may overflow.
    Exactly as PyTorch (which computes ``avg_pool(x^p) * kernel cells``), a ceil-mode window that
    overhangs the padded input is scaled by ``kernel cells / cells inside``. Padding adds zeros.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      p: the power (PyTorch's ``norm_type``), finite and > 0.
      {shared}

    Returns:
      ``(..., *out_spatial, channels)`` (or channels first), in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import lp_pool
      >>> lp_pool(jnp.array([[[3.0], [4.0], [0.0], [1.0]]]), 2.0, 2)[..., 0]
      Array([[5., 1.]], dtype=float32)
    """
    fn = "lp_pool"
    x, axes, windows = _setup(
        fn, x, kernel_size, stride, padding, 1, ceil_mode, convention, data_format
    )
    empty = empty_result(x, axes, [w.out for w in windows], float_dtype(x.dtype))
    if empty is not None:
        return empty
    acc = accum_dtype(x.dtype)
    total = window_sum(safe_power(x.astype(acc), p), stages(axes, windows))
    kernel = per_axis(kernel_size, len(axes), arg="kernel_size", fn=fn, minimum=1)
    cells = float(np.prod(kernel))
    inside = grid_product(axes, [w.inside for w in windows], x.ndim)
    if (inside != cells).any():
        total = total * jnp.asarray(cells / np.maximum(inside, 1), acc)
    return safe_root(total, p).astype(float_dtype(x.dtype))


# --------------------------------------------------------------------------------------------
# Max and min pooling, indices and unpooling.
# --------------------------------------------------------------------------------------------


def _extreme_pool(
    fn,
    x,
    kernel_size,
    stride,
    padding,
    dilation,
    ceil_mode,
    return_indices,
    convention,
    data_format,
    *,
    largest: bool,
):
    x, axes, windows = _setup(
        fn, x, kernel_size, stride, padding, dilation, ceil_mode, convention, data_format
    )
    outs = [w.out for w in windows]
    empty = empty_result(x, axes, outs, x.dtype)
    if empty is not None:
        return (empty, empty_result(x, axes, outs, jnp.int32)) if return_indices else empty
    floor = None
    if convention == "caffe" and jnp.issubdtype(x.dtype, jnp.floating):
        # Caffe starts from -FLT_MAX: an empty window (or one of -inf) gives it, not -inf.
        floor = jnp.finfo(x.dtype).min if largest else jnp.finfo(x.dtype).max
    out, index = window_extreme(
        x, stages(axes, windows), largest=largest, want_index=return_indices, floor=floor
    )
    return (out, index) if return_indices else out


@_api("dilation", "return_indices", checks={"return_indices": check_bool})
def max_pool(
    x: Input,
    kernel_size: Size,
    *,
    stride: Size | None = None,
    padding: Padding = 0,
    dilation: Size = 1,
    ceil_mode: bool | None = None,
    return_indices: bool = False,
    convention: str = "pytorch",
    data_format: str = "channels_last",
) -> Shaped[Array, "..."] | tuple[Shaped[Array, "..."], Int[Array, "..."]]:
    """Max pooling over sliding windows (PyTorch's ``max_pool1d/2d/3d``, Caffe's MAX).

    ``y = max_window x``, padding read as -inf. The gradient goes to one winner per window: the
    first maximum in row-major window order, or the last NaN if the window holds NaN; that is
    PyTorch's scan, and ``return_indices`` gives the same positions PyTorch does. With
    ``convention="caffe"`` a result below the lowest finite float (an empty window, or a window of
    -inf) is the lowest finite float, as Caffe starts from -FLT_MAX; NaN still propagates (Caffe's
    CPU path would skip it).

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}
      dilation: spacing between window cells (PyTorch), an int or one per axis.
      return_indices: also return the winners' flat spatial indices (for ``max_unpool``).

    {returns}

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import max_pool
      >>> x = jnp.arange(32.0).reshape(1, 32, 1) % 7
      >>> max_pool(x, 3, stride=2).shape, max_pool(x, 3, stride=2, convention="caffe").shape
      ((1, 15, 1), (1, 16, 1))
      >>> y, i = max_pool(jnp.array([[[1.0], [3.0], [3.0], [2.0]]]), 2, return_indices=True)
      >>> y[..., 0], i[..., 0]
      (Array([[3., 3.]], dtype=float32), Array([[1, 2]], dtype=int32))
    """
    return _extreme_pool(
        "max_pool",
        x,
        kernel_size,
        stride,
        padding,
        dilation,
        ceil_mode,
        return_indices,
        convention,
        data_format,
        largest=True,
    )


@_api("dilation", "return_indices", checks={"return_indices": check_bool})
def min_pool(
    x: Input,
    kernel_size: Size,
    *,
    stride: Size | None = None,
    padding: Padding = 0,
    dilation: Size = 1,
    ceil_mode: bool | None = None,
    return_indices: bool = False,
    convention: str = "pytorch",
    data_format: str = "channels_last",
) -> Shaped[Array, "..."] | tuple[Shaped[Array, "..."], Int[Array, "..."]]:
    """Min pooling over sliding windows: ``max_pool``'s mirror image.

    ``y = min_window x``, padding read as +inf; the gradient goes to the first minimum in
    row-major window order (the last NaN if any), and ``return_indices`` gives its position.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}
      dilation: spacing between window cells, an int or one per axis.
      return_indices: also return the winners' flat spatial indices.

    {returns}

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import min_pool
      >>> min_pool(jnp.array([[[4.0], [1.0], [3.0], [2.0]]]), 2)[..., 0]
      Array([[1., 2.]], dtype=float32)
    """
    return _extreme_pool(
        "min_pool",
        x,
        kernel_size,
        stride,
        padding,
        dilation,
        ceil_mode,
        return_indices,
        convention,
        data_format,
        largest=False,
    )


@pooling_function(
    static=("kernel_size", "stride", "padding", "output_size", "data_format"),
    validate=validate_settings,
)
def max_unpool(
    x: Input,
    indices: Shaped[ArrayLike, "..."],
    kernel_size: Size,
    *,
    stride: Size | None = None,
    padding: int | tuple[int, ...] = 0,
    output_size: tuple[int, ...] | None = None,
    data_format: str = "channels_last",
) -> Shaped[Array, "..."]:
    """Inverse of ``max_pool`` with ``return_indices``, PyTorch's ``max_unpool1d/2d/3d``.

    Places each value of x at its flat spatial index in a zero map: ``y[indices[i]] = x[i]``.
    The output's spatial size is ``(in - 1) * stride - 2 * padding + kernel_size`` per axis (as
    PyTorch), or ``output_size`` (the spatial sizes, or x's full output shape). Indices out of
    range (and -1, an empty window) are dropped; where several values go to one position (windows
    that overlap), one of them is kept, as in PyTorch.

    Args:
      x: pooled values, e.g. ``(batch, height, width, channels)``.
      indices: the flat indices ``max_pool(..., return_indices=True)`` returned, x's shape.
      kernel_size: the pool's kernel size, an int or one per spatial axis.
      stride: the pool's stride; default ``kernel_size``.
      padding: the pool's (symmetric) padding, an int or one per axis.
      output_size: the spatial size to restore (resolves ceil-mode and odd-size ambiguity).
      data_format: "channels_last" or "channels_first".

    Returns:
      x's shape with the spatial axes unpooled, in x's dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import max_pool, max_unpool
      >>> x = jnp.array([[[1.0], [3.0], [2.0], [0.0]]])
      >>> y, i = max_pool(x, 2, return_indices=True)
      >>> max_unpool(y, i, 2)[..., 0]
      Array([[0., 3., 2., 0.]], dtype=float32)
    """
    fn = "max_unpool"
    x = as_array(x, fn)
    indices = jnp.asarray(indices)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"{fn}: indices must be integers, got dtype {indices.dtype}.")
    if indices.shape != x.shape:
        raise ValueError(
            f"{fn}: indices of shape {indices.shape} must have x's shape {x.shape} (as returned "
            "by max_pool(..., return_indices=True))."
        )
    n = spatial_rank(x.ndim, kernel_size, arg="kernel_size", fn=fn, data_format=data_format)
    axes = spatial_axes(x.ndim, n, data_format)
    kernel = per_axis(kernel_size, n, arg="kernel_size", fn=fn, minimum=1)
    stride = kernel if stride is None else per_axis(stride, n, arg="stride", fn=fn, minimum=1)
    pad = per_axis(padding, n, arg="padding", fn=fn, minimum=0)
    default = tuple(
        (x.shape[a] - 1) * s - 2 * p + k
        for a, k, s, p in zip(axes, kernel, stride, pad, strict=True)
    )
    if output_size is None:
        size = default
    else:
        size = tuple(output_size)
        if len(size) == x.ndim:
            size = tuple(size[a] for a in axes)
        if len(size) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size
        ):
            raise ValueError(
                f"{fn}: output_size must give the {n} spatial sizes (or x's full output shape), "
                f"got {output_size!r}."
            )
        for v, d, s in zip(size, default, stride, strict=True):
            if not d - s < v < d + s:
                raise ValueError(
                    f"{fn}: output_size {size} is not a size max_pool with this kernel, stride and "
                    f"padding maps to x's spatial shape {[x.shape[a] for a in axes]} (expected "
                    f"within stride of {default})."
                )
    if any(v < 1 for v in size):
        raise ValueError(f"{fn}: the unpooled spatial size {size} is empty; pass output_size.")
    empty = empty_result(x, axes, size, x.dtype)
    if empty is not None:
        return empty
    # Move the spatial axes last, flatten them, scatter along that one axis.
    rest = [i for i in range(x.ndim) if i not in axes]
    xt = jnp.transpose(x, (*rest, *axes)).reshape(*(x.shape[i] for i in rest), -1)
    it = jnp.transpose(indices, (*rest, *axes)).reshape(xt.shape).astype(jnp.int32)
    positions = int(np.prod(size))
    it = jnp.where((it >= 0) & (it < positions), it, positions)  # out of range: dropped
    lead = xt.shape[:-1]
    grids = jnp.meshgrid(*(jnp.arange(d) for d in lead), indexing="ij") if lead else []
    grids = [g[..., None] for g in grids]
    out = jnp.zeros((*lead, positions), x.dtype)
    out = out.at[(*grids, it)].set(xt, mode="drop")
    out = out.reshape(*lead, *size)
    inverse = np.argsort((*rest, *axes))
    return jnp.transpose(out, inverse)


# --------------------------------------------------------------------------------------------
# Stochastic pooling.
# --------------------------------------------------------------------------------------------


@_api("train", checks={"train": check_bool})
def stochastic_pool(
    x: Input,
    kernel_size: Size,
    *,
    key: jax.Array | None = None,
    train: bool,
    stride: Size | None = None,
    padding: Padding = 0,
    ceil_mode: bool | None = None,
    convention: str = "pytorch",
    data_format: str = "channels_last",
) -> Float[Array, "..."]:
    """Stochastic pooling over sliding windows (Zeiler & Fergus; Caffe's STOCHASTIC).

    With ``a = max(x, 0)`` over each window (the method assumes non-negative activations):

    - ``train=True``: sample one cell l of each window with probability ``a_l / sum a`` using
      ``key`` and return ``x_l`` (its gradient goes to that cell);
    - ``train=False``: ``sum a^2 / sum a``.

    A window whose activations are all 0 gives 0 (Caffe). Caffe's layer uses its own output
    rule: pass ``convention="caffe"`` to match it (and ``stride``: Caffe's default is 1).

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      {shared}
      key: a PRNG key, required when ``train=True``; every window draws independently.
      train: sample (True) or take the expectation (False); a bool.

    Returns:
      ``(..., *out_spatial, channels)`` (or channels first), in x's float dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import stochastic_pool
      >>> x = jnp.array([[[1.0], [3.0], [0.0], [0.0]]])
      >>> stochastic_pool(x, 2, train=False)[..., 0]  # (1 + 9) / 4, and an all-zero window
      Array([[2.5, 0. ]], dtype=float32)

    References:
      Zeiler, Fergus, "Stochastic Pooling for Regularization of Deep Convolutional Neural
      Networks", ICLR 2013, arXiv:1301.3557.
    """
    fn = "stochastic_pool"
    x, axes, windows = _setup(
        fn, x, kernel_size, stride, padding, 1, ceil_mode, convention, data_format
    )
    if train and key is None:
        raise ValueError(f"{fn}: train=True samples positions and needs key=jax.random.key(...).")
    empty = empty_result(x, axes, [w.out for w in windows], float_dtype(x.dtype))
    if empty is not None:
        return empty
    stage = Stage(axes, tuple(windows))
    xa = x.astype(accum_dtype(x.dtype))
    taps = stage.taps(xa, 0)
    if train:
        acts = [lax.stop_gradient(jnp.maximum(t, 0)) for t in taps]  # sampling weights only
        total = functools.reduce(jnp.add, acts)
        u = jax.random.uniform(key, total.shape, total.dtype) * total
        out, found, cum = jnp.zeros_like(total), jnp.zeros(total.shape, bool), 0
        last = jnp.zeros_like(total)
        for t, a in zip(taps, acts, strict=True):
            cum = cum + a
            take = ~found & (cum > u)
            out = jnp.where(take, t, out)
            found = found | take
            last = jnp.where(a > 0, t, last)
        # Rounding can leave u at the very top: take the last cell with a > 0 then.
        out = jnp.where(found, out, last)
        out = jnp.where(total > 0, out, 0)
    else:
        acts = [jnp.maximum(t, 0) for t in taps]
        out = safe_divide(sum(a * a for a in acts), functools.reduce(jnp.add, acts))
    nan = functools.reduce(jnp.logical_or, [jnp.isnan(t) for t in taps])
    out = jnp.where(nan, jnp.nan, out)
    return out.astype(float_dtype(x.dtype))
