"""Adaptive pooling: a fixed output size, with PyTorch's exact windows.

For output index i of ``out`` cells over an axis of length L, the window is
``[floor(i L / out), ceil((i + 1) L / out))``: windows overlap where L is not a multiple of out,
and out may exceed L (windows repeat cells). Where L is a multiple of out the windows tile the
axis and the pool runs as strided slices; otherwise as gathers. The output size is static under
jit. (Flax has no adaptive pooling; Equinox's windows do not overlap and differ from PyTorch's.)
"""

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, Shaped

from gapjax.pooling._common import (
    SettingTypeError,
    accum_dtype,
    as_array,
    check_bool,
    float_dtype,
    pooling_function,
)
from gapjax.pooling._windows import (
    AxisWindows,
    adaptive_axis,
    grid_product,
    spatial_axes,
    spatial_rank,
    stages,
    window_extreme,
    window_sum,
)
from gapjax.pooling.window_pool import Input, empty_result

__all__ = ["adaptive_avg_pool", "adaptive_max_pool"]

OutputSize = int | tuple[int | None, ...]


def _setup(fn: str, x: Any, output_size, data_format) -> tuple[jax.Array, tuple, list]:
    x = as_array(x, fn)
    n = spatial_rank(x.ndim, output_size, arg="output_size", fn=fn, data_format=data_format)
    axes = spatial_axes(x.ndim, n, data_format)
    _validate(fn, {"output_size": output_size})
    sizes = (output_size,) * n if not isinstance(output_size, tuple) else output_size
    windows: list[AxisWindows] = []
    for a, size in zip(axes, sizes, strict=True):
        if size is None:
            size = x.shape[a]
        if x.shape[a] < 1:
            raise ValueError(f"{fn}: x of shape {x.shape} has an empty spatial axis {a}.")
        windows.append(adaptive_axis(x.shape[a], size))
    return x, axes, windows


def _validate(fn: str, arguments: dict[str, Any]) -> None:
    """``output_size``: positive ints (NumPy ints too) or None, checked without data."""
    if "output_size" not in arguments:
        return
    output_size = arguments["output_size"]
    sizes = output_size if isinstance(output_size, tuple) else (output_size,)
    for size in sizes:
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise SettingTypeError(
                f"{fn}: output_size must be a positive int (or None to keep an axis) per spatial "
                f"axis, got {output_size!r}."
            )
        if size is not None and size < 1:
            raise ValueError(
                f"{fn}: output_size must be a positive int (or None to keep an axis) per spatial "
                f"axis, got {output_size!r}."
            )
    if output_size is None:
        raise SettingTypeError(f"{fn}: output_size must be an int or a tuple, got None.")


@pooling_function(static=("output_size", "data_format"), validate=_validate)
def adaptive_avg_pool(
    x: Input,
    output_size: OutputSize,
    *,
    data_format: str = "channels_last",
) -> Float[Array, "..."]:
    """Adaptive average pooling, PyTorch's ``adaptive_avg_pool1d/2d/3d``.

    Output cell i (per axis) averages the window ``[floor(i L / out), ceil((i + 1) L / out))``.
    ``output_size=1`` is global average pooling with the spatial axes kept.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      output_size: an int (every spatial axis) or one entry per spatial axis, None keeping that
        axis; a tuple also fixes the number of spatial axes (any leading axes, or unbatched).
      data_format: "channels_last" ``(..., *spatial, channels)`` or "channels_first".

    Returns:
      ``(..., *output_size, channels)`` (or channels first), in x's float dtype (float16/bfloat16
      summed in float32).

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import adaptive_avg_pool
      >>> x = jnp.arange(5.0).reshape(1, 5, 1)  # windows [0, 3) and [2, 5) overlap
      >>> adaptive_avg_pool(x, 2)[..., 0]
      Array([[1., 3.]], dtype=float32)
    """
    x, axes, windows = _setup("adaptive_avg_pool", x, output_size, data_format)
    empty = empty_result(x, axes, [w.out for w in windows], float_dtype(x.dtype))
    if empty is not None:
        return empty
    acc = accum_dtype(x.dtype)
    divisor = grid_product(axes, [w.size for w in windows], x.ndim)
    out = window_sum(x.astype(acc), stages(axes, windows), scale=1.0 / divisor)
    return out.astype(float_dtype(x.dtype))


@pooling_function(
    static=("output_size", "return_indices", "data_format"),
    checks={"return_indices": check_bool},
    validate=_validate,
)
def adaptive_max_pool(
    x: Input,
    output_size: OutputSize,
    *,
    return_indices: bool = False,
    data_format: str = "channels_last",
) -> Shaped[Array, "..."] | tuple[Shaped[Array, "..."], Int[Array, "..."]]:
    """Adaptive max pooling, PyTorch's ``adaptive_max_pool1d/2d/3d``.

    Output cell i (per axis) is the max of ``[floor(i L / out), ceil((i + 1) L / out))``. The
    gradient goes to one winner per window (the first maximum in row-major order, the last NaN if
    any), which is also the index ``return_indices`` gives, as PyTorch.

    Args:
      x: input, e.g. ``(batch, height, width, channels)``.
      output_size: an int or one entry per spatial axis (None keeps that axis).
      return_indices: also return the winners' flat spatial indices (row-major).
      data_format: "channels_last" ``(..., *spatial, channels)`` or "channels_first".

    Returns:
      ``(..., *output_size, channels)`` (or channels first) in x's dtype; with
      ``return_indices=True`` also the int32 flat indices into x's spatial positions.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import adaptive_max_pool
      >>> x = jnp.array([[[1.0], [5.0], [2.0], [0.0], [4.0]]])
      >>> y, i = adaptive_max_pool(x, 3, return_indices=True)
      >>> y[..., 0], i[..., 0]
      (Array([[5., 5., 4.]], dtype=float32), Array([[1, 1, 4]], dtype=int32))
    """
    x, axes, windows = _setup("adaptive_max_pool", x, output_size, data_format)
    outs = [w.out for w in windows]
    empty = empty_result(x, axes, outs, x.dtype)
    if empty is not None:
        return (empty, empty_result(x, axes, outs, jnp.int32)) if return_indices else empty
    out, index = window_extreme(x, stages(axes, windows), largest=True, want_index=return_indices)
    return (out, index) if return_indices else out
