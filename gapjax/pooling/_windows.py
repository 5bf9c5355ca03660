"""Window geometry and the tap engine behind windowed and adaptive pooling (private).

Geometry: for every pooled axis, ``AxisWindows`` says where each output's window reads. Output
``i`` reads input positions ``base[i] + j * dilation`` for the taps ``j < size[i]`` that fall inside
``[0, length)``; the other taps read padding. Windowed pooling has ``base[i] = i * stride - pad_lo``
and ``size[i] = kernel``, less the leading and trailing taps that read padding in every window
(``windowed_axis`` drops them, so a kernel far larger than x costs what one of x's size does);
adaptive pooling has PyTorch's windows ``[floor(i L / out), ceil((i+1) L / out))``.
The output-length rules of PyTorch, Caffe and Keras live here, with the argument checks.

Engine: a window reduction is a reduction over *taps*. Tap ``j`` of an axis is one array of the
output's length, gathered from the input: where the positions it reads form an arithmetic
progression (every windowed pool; adaptive pools whose windows tile the input) it is a strided
``lax.slice`` padded with the reduction's identity over the outputs whose tap lies in padding, so
XLA fuses all the taps of a window into one loop over the output that reads the input once and
never materializes a padded copy. Otherwise (adaptive windows of varying size) it is a gather.
Small windows reduce all their axes at once (one fused loop, ``prod(kernel)`` taps); irregular
adaptive windows of more cells axis by axis, last axis first (``sum(kernel)`` taps), which gives
the same maxima, the same sums up to rounding, and, for max, the same winner as a row-major scan
of the whole window.

Max/min pooling route the gradient to one winner per window, PyTorch's rule: the first maximum in
row-major window order, or the last NaN if the window holds any. A custom JVP takes the value
from the extreme and the winning tap (an int8 per output) from a scan over the taps, and the
backward pass is the transpose of the tap gathers applied to the cotangent masked by the winner:
one fused loop writing the gradient, no scatter and no second read of the input (XLA's
select-and-scatter is much slower on CPU).

Compile time: XLA:CPU compiles each region of the assembled output (interior and borders) as a
loop of its own, so regions cost several times flax's ``reduce_window`` to compile. The forward
extreme of small windows of stride 1 therefore reads clamped positions in one loop where that
is exact (``_clamped``): a copy of a cell of the same window leaves its extreme unchanged.
Sums, strided windows and the winner's scan keep the regions: the single-loop forms tried for
them ran slower (benchmarks/window_formulations.py, benchmarks/compile_time.py).

Large windows (more than ``_BOX_MIN_CELLS`` cells) on plain sliding-window geometry would make
the taps, and the time to compile them, grow with the kernel: they are one XLA window reduction
instead (``_box_*``: ``lax.reduce_window``, a reshape where they tile the input; for max and min
a variadic reduction carrying the winner's flat position, whose tangent is a gather).
"""

import dataclasses
import functools
import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gapjax.pooling._common import DATA_FORMATS, SettingTypeError

CONVENTIONS = ("pytorch", "caffe")
# Windows with at most this many cells reduce all axes in one fused loop; larger ones go axis by
# axis.
_DIRECT_MAX_TAPS = 32
# Windows with more cells than this (or that tile the input) are one XLA window reduction
# (``_large_box``) instead of taps.
_BOX_MIN_CELLS = _DIRECT_MAX_TAPS


# --------------------------------------------------------------------------------------------
# Geometry.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class AxisWindows:
    """The windows of one pooled axis.

    Attributes:
      length: the input length along the axis.
      base: ``(out,)`` input position of each output's first tap (negative in the left padding).
      size: ``(out,)`` number of taps of each output's window (taps past it read nothing).
      dilation: spacing of the taps.
      taps: the most taps any window has.
      inside: ``(out,)`` cells of each window inside the padded extent (PyTorch's and Caffe's
        ``count_include_pad`` divisor); None for adaptive windows.
    """

    length: int
    base: np.ndarray
    size: np.ndarray
    dilation: int = 1
    inside: np.ndarray | None = None

    @property
    def out(self) -> int:
        return int(self.base.shape[0])

    @property
    def taps(self) -> int:
        return int(self.size.max()) if self.out else 0

    def src(self, j: int) -> np.ndarray:
        """Input position read by tap ``j`` of every output, -1 where it reads padding."""
        pos = self.base + j * self.dilation
        ok = (j < self.size) & (pos >= 0) & (pos < self.length)
        return np.where(ok, pos, -1)

    def valid_counts(self) -> np.ndarray:
        """Cells of each window inside the input (``count_include_pad=False``'s divisor)."""
        return sum((self.src(j) >= 0).astype(np.int64) for j in range(self.taps))

    def sub(self, start: int, stop: int) -> "AxisWindows":
        """The windows of outputs ``[start, stop)``."""
        inside = None if self.inside is None else self.inside[start:stop]
        return dataclasses.replace(
            self, base=self.base[start:stop], size=self.size[start:stop], inside=inside
        )

    def interior(self) -> tuple[int, int] | None:
        """The outputs ``[a, b)`` whose every tap reads inside x (None: windows vary in size)."""
        if self.out == 0 or not (self.size == self.taps).all():
            return None
        full = np.ones(self.out, bool)
        for j in range(self.taps):
            full &= self.src(j) >= 0
        idx = np.flatnonzero(full)
        if idx.size == 0 or idx.size != idx[-1] + 1 - idx[0]:
            return None
        return int(idx[0]), int(idx[-1]) + 1

    def first_valid(self) -> np.ndarray:
        """Index of each output's first tap inside the input, -1 for an empty window."""
        first = np.full(self.out, -1, np.int64)
        for j in reversed(range(self.taps)):
            first = np.where(self.src(j) >= 0, j, first)
        return first


def output_length(
    length: int,
    kernel: int,
    stride: int,
    pad: tuple[int, int],
    dilation: int,
    ceil_mode: bool,
    convention: str,
) -> int:
    """Output length of one axis under PyTorch's or Caffe's rule (REFERENCE.md section 1).

    ``pad`` is ``(lo, hi)``; PyTorch and Caffe pad symmetrically, and the rules generalize by
    using ``lo + hi`` for ``2 p`` and ``lo`` for the left padding in the ceil-mode correction.
    """
    lo, hi = pad
    eff = dilation * (kernel - 1) + 1
    if convention == "pytorch":
        out = (length + lo + hi - eff + (stride - 1 if ceil_mode else 0)) // stride + 1
        if ceil_mode and (out - 1) * stride >= length + lo:
            out -= 1  # a window may not start in the right padding
        return out
    span = length + lo + hi - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if (lo or hi) and (out - 1) * stride >= length + lo:
        out -= 1  # Caffe clips only when there is padding
    return out


def same_padding(length: int, kernel: int, stride: int, dilation: int) -> tuple[int, int, int]:
    """Keras/TF "same": ``(out, lo, hi)``, out = ceil(L / s), the extra cell on the high side."""
    out = -(-length // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - length, 0)
    return out, total // 2, total - total // 2


def windowed_axis(
    length: int, kernel: int, stride: int, pad: tuple[int, int], dilation: int, out: int
) -> AxisWindows:
    """The windows of a windowed pool along one axis.

    Taps that read padding in every window (the leading and trailing ones of a kernel much
    larger than x, e.g. ``kernel_size=10**6, padding="same"``) are dropped: they add nothing to
    a sum or an extreme, and the engine's cost grows with the taps. ``inside`` (the
    ``count_include_pad`` divisor) still counts the whole kernel.
    """
    lo, hi = pad
    base = np.arange(out, dtype=np.int64) * stride - lo
    inside = np.clip(np.minimum(base + kernel, length + hi) - base, 0, None)
    first, last = 0, kernel - 1
    if out and length:
        # Tap j reads base + j * dilation: left of x in every window while base[-1] + j d < 0,
        # right of it in every window once base[0] + j d >= length.
        first = min(max(0, -(base[-1] // dilation)), kernel - 1)
        last = max(min(kernel - 1, (length - 1 - base[0]) // dilation), first)
    size = np.full(out, last - first + 1, np.int64)
    return AxisWindows(length, base + first * dilation, size, dilation, inside)


def empty_windows(w: AxisWindows) -> np.ndarray:
    """Whether each window of ``w`` reads no cell of x (only padding)."""
    d = w.dilation
    first = np.maximum(0, -(w.base // d))  # the first tap at a position >= 0
    return ~((first < w.size) & (w.base + first * d < w.length))


def adaptive_axis(length: int, out: int) -> AxisWindows:
    """PyTorch's adaptive windows: ``[floor(i L / out), ceil((i + 1) L / out))``."""
    i = np.arange(out, dtype=np.int64)
    start = (i * length) // out
    end = -((-(i + 1) * length) // out)
    return AxisWindows(length, start, end - start)


# --------------------------------------------------------------------------------------------
# Argument parsing (trace time, static values).
# --------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def per_axis(value: Any, n: int, *, arg: str, fn: str, minimum: int) -> tuple[int, ...]:
    """An int or a sequence of n ints, each >= minimum, as an n-tuple."""
    values = (value,) * n if _is_int(value) else value
    if (
        not isinstance(values, Sequence)
        or isinstance(values, str)
        or len(values) != n
        or not all(_is_int(v) for v in values)
    ):
        raise SettingTypeError(
            f"{fn}: {arg} must be an int or a sequence of {n} ints (one per spatial axis), "
            f"got {value!r}."
        )
    if any(v < minimum for v in values):
        raise ValueError(f"{fn}: {arg} must be >= {minimum} on every axis, got {value!r}.")
    return tuple(int(v) for v in values)


def spatial_rank(x_ndim: int, spec: Any, *, arg: str, fn: str, data_format: str) -> int:
    """The number of spatial axes: len(spec) for a sequence, else x.ndim - 2 (batch, channels)."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"{fn}: data_format must be one of {DATA_FORMATS}, got {data_format!r}.")
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        n = len(spec)
        if not 1 <= n <= 3:
            raise ValueError(f"{fn}: {arg} must name 1, 2 or 3 spatial axes, got {spec!r}.")
        if x_ndim < n + 1:
            raise ValueError(
                f"{fn}: x of rank {x_ndim} cannot hold {n} spatial axes and a channel axis "
                f"({arg}={spec!r})."
            )
        return n
    n = x_ndim - 2
    if not 1 <= n <= 3:
        layout = (
            "(batch, *spatial, channels)"
            if data_format == "channels_last"
            else ("(batch, channels, *spatial)")
        )
        raise ValueError(
            f"{fn}: with an int {arg}, x must have rank 3, 4 or 5, {layout}; got rank {x_ndim}. "
            f"Give {arg} as a tuple (one entry per spatial axis) for unbatched input or extra "
            "leading axes."
        )
    return n


def spatial_axes(x_ndim: int, n: int, data_format: str) -> tuple[int, ...]:
    """The positions of the n spatial axes of x under data_format."""
    if data_format == "channels_last":
        return tuple(range(x_ndim - n - 1, x_ndim - 1))
    return tuple(range(x_ndim - n, x_ndim))


def parse_padding(padding: Any, n: int, fn: str) -> str | tuple[tuple[int, int], ...]:
    """ "same", "valid", or per-axis (lo, hi) pairs from an int, n ints or n pairs."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in ("same", "valid"):
            raise ValueError(
                f"{fn}: padding must be an int, pairs, 'same' or 'valid'; got {padding!r}."
            )
        return mode
    if _is_int(padding):
        padding = (padding,) * n
    ok = isinstance(padding, Sequence) and len(padding) == n
    pairs = []
    for p in padding if ok else ():
        if _is_int(p):
            pairs.append((int(p), int(p)))
        elif isinstance(p, Sequence) and len(p) == 2 and all(_is_int(v) for v in p):
            pairs.append((int(p[0]), int(p[1])))
        else:
            ok = False
    if not ok:
        raise SettingTypeError(
            f"{fn}: padding must be an int, {n} ints, {n} (lo, hi) pairs, 'same' or 'valid'; "
            f"got {padding!r}."
        )
    if any(v < 0 for pair in pairs for v in pair):
        raise ValueError(f"{fn}: padding must be >= 0, got {padding!r}.")
    return tuple(pairs)


def windowed_plan(
    shape: tuple[int, ...],
    axes: tuple[int, ...],
    *,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Any,
    dilation: tuple[int, ...],
    ceil_mode: bool,
    convention: str,
    fn: str,
) -> list[AxisWindows]:
    """Validates the geometry and returns the windows of every pooled axis.

    Raises ValueError, naming the arguments and the sizes, for a dilated kernel larger than the
    padded axis (no output) and, except under Caffe's rule (whose ceil rounding makes empty
    windows, as Caffe does), for windows that read only padding (PyTorch refuses these).
    """
    plans = []
    for a, k, s, d, i in zip(axes, kernel, stride, dilation, range(len(axes)), strict=True):
        length = shape[a]
        eff = d * (k - 1) + 1
        if padding == "same":
            out, lo, hi = same_padding(length, k, s, d)
        else:
            lo, hi = (0, 0) if padding == "valid" else padding[i]
            if convention == "pytorch" and max(lo, hi) > k // 2:
                # PyTorch's check uses the kernel itself, not the dilated one.
                raise ValueError(
                    f"{fn}: padding {(lo, hi) if lo != hi else lo} on spatial axis {i} is more "
                    f"than half the kernel_size {k}; PyTorch forbids it (padding <= {k // 2}, "
                    "whatever the dilation). Pad x explicitly if you mean it."
                )
            if convention == "caffe" and max(lo, hi) >= k:
                raise ValueError(
                    f"{fn}: padding {max(lo, hi)} on spatial axis {i} must be smaller than the "
                    f"kernel {k} under Caffe's convention."
                )
            out = output_length(length, k, s, (lo, hi), d, ceil_mode, convention)
        if out < 1:
            raise ValueError(
                f"{fn}: kernel_size {k} (with dilation {d}: {eff}) is larger than spatial axis "
                f"{i} of x padded: length {length} + padding {lo}+{hi} = {length + lo + hi}; x of "
                f"shape {shape} gives no output."
            )
        windows = windowed_axis(length, k, s, (lo, hi), d, out)
        empty = empty_windows(windows)
        if (convention != "caffe" and empty.any()) or empty.all():
            raise ValueError(
                f"{fn}: on spatial axis {i} of x of shape {shape} (length {length}), "
                f"{int(empty.sum())} of {out} windows read only padding (kernel_size {k}, "
                f"stride {s}, padding {(lo, hi) if lo != hi else lo}, dilation {d}); PyTorch "
                "refuses these. Use less padding or dilation."
            )
        plans.append(windows)
    return plans


# --------------------------------------------------------------------------------------------
# The tap engine.
# --------------------------------------------------------------------------------------------


def _grid(axes: Sequence[int], values: Sequence[np.ndarray], ndim: int, combine) -> np.ndarray:
    """Combines per-axis ``(out,)`` arrays placed on their axes into one broadcasting array."""
    out = None
    for axis, v in zip(axes, values, strict=True):
        v = np.asarray(v).reshape([-1 if i == axis else 1 for i in range(ndim)])
        out = v if out is None else combine(out, v)
    return out


def grid_product(axes: Sequence[int], values: Sequence[np.ndarray], ndim: int) -> np.ndarray:
    """Outer product of per-axis ``(out,)`` arrays (e.g. window divisors), float64."""
    return _grid(axes, [np.asarray(v, np.float64) for v in values], ndim, np.multiply)


def _tap_plan(src: np.ndarray):
    """How to read positions ``src`` (-1: padding): a strided slice then padding, or a gather.

    Returns ("slice", start, stop, step, lo, hi), ("gather", indices, valid) or ("empty",).
    """
    out = src.shape[0]
    valid = src >= 0
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return ("empty",)
    a, b = int(idx[0]), int(idx[-1]) + 1
    seg = src[a:b]
    step = int(seg[1] - seg[0]) if seg.size > 1 else 1
    if idx.size == b - a and step > 0 and np.array_equal(seg, seg[0] + step * np.arange(seg.size)):
        return ("slice", int(seg[0]), int(seg[-1]) + 1, step, a, out - b)
    return ("gather", np.where(valid, src, 0), valid)


def take_taps(x: jax.Array, reads: Sequence[tuple[int, np.ndarray]], fill: Any) -> jax.Array:
    """Positions ``src`` of x along each ``(axis, src)`` of ``reads``; -1 reads ``fill``.

    All slices (and gathers) come first and one pad last: a pad between two slices would be
    shared by several taps, and XLA would write it out instead of fusing it.
    """
    plans = [(axis, _tap_plan(src), src.shape[0]) for axis, src in reads]
    if any(p[0] == "empty" for _, p, _ in plans):
        shape = list(x.shape)
        for axis, _, out in plans:
            shape[axis] = out
        return jnp.full(shape, fill, x.dtype)
    config = [(0, 0, 0)] * x.ndim
    masks = []
    for axis, p, out in plans:
        if p[0] == "slice":
            _, start, stop, step, lo, hi = p
            x = lax.slice_in_dim(x, start, stop, step, axis)
            config[axis] = (lo, hi, 0)
        else:
            _, indices, valid = p
            x = jnp.take(x, indices, axis=axis, mode="clip")
            if not valid.all():
                masks.append(valid.reshape([out if i == axis else 1 for i in range(x.ndim)]))
    if any(c != (0, 0, 0) for c in config):
        x = lax.pad(x, jnp.asarray(fill, x.dtype), config)
    if masks:
        keep = functools.reduce(np.logical_and, masks)
        x = jnp.where(keep, x, jnp.asarray(fill, x.dtype))
    return x


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
    """A reduction over the windows of some axes at once: its taps in row-major order."""

    axes: tuple[int, ...]
    windows: tuple[AxisWindows, ...]

    @property
    def combos(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*(range(w.taps) for w in self.windows)))

    def tap(self, x: jax.Array, combo: tuple[int, ...], fill: Any) -> jax.Array:
        reads = [(a, w.src(j)) for a, w, j in zip(self.axes, self.windows, combo, strict=True)]
        return take_taps(x, reads, fill)

    def reads_padding(self, combo: tuple[int, ...]) -> bool:
        """Whether tap ``combo`` reads padding (or gathers) for some output."""
        plans = [_tap_plan(w.src(j)) for w, j in zip(self.windows, combo, strict=True)]
        return any(p[0] != "slice" or p[4:] != (0, 0) for p in plans)

    def taps(self, x: jax.Array, fill: Any) -> list[jax.Array]:
        return [self.tap(x, c, fill) for c in self.combos]

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = list(shape)
        for axis, w in zip(self.axes, self.windows, strict=True):
            shape[axis] = w.out
        return tuple(shape)

    def grid(self, values: Sequence[np.ndarray], ndim: int) -> np.ndarray:
        """Sum of per-axis ``(out,)`` arrays, broadcasting against the stage output."""
        return _grid(self.axes, values, ndim, np.add)

    def first_valid(self, ndim: int) -> np.ndarray:
        """Row-major index of each output's first tap inside the input, -1 if none."""
        firsts = [w.first_valid() for w in self.windows]
        sizes = [w.taps for w in self.windows]
        flat = self.grid([f * math.prod(sizes[i + 1 :]) for i, f in enumerate(firsts)], ndim)
        empty = self.grid([(f < 0).astype(np.int64) for f in firsts], ndim) > 0
        return np.where(empty, -1, flat)

    def assemble(self, fn, k: int = 0, region: tuple[tuple[int, int], ...] | None = None):
        """``fn(stage, region)`` for the whole output, computed region by region.

        Windows that touch padding read it through ``lax.pad``, which XLA's CPU loops handle
        element by element (far slower than plain slices). So the output is split, axis by
        axis, into the interior (every tap inside x: slices only) and thin borders, each
        computed by ``fn`` on the restricted stage and concatenated back. ``fn`` returns an
        array or a tuple of arrays laid out like the stage output.
        """
        if region is None:
            region = tuple((0, w.out) for w in self.windows)
        if k == len(self.axes):
            sub = Stage(
                self.axes, tuple(w.sub(*r) for w, r in zip(self.windows, region, strict=True))
            )
            return fn(sub, region)
        w = self.windows[k]
        inner = w.interior()
        lo, hi = region[k]
        if inner is None or inner[0] >= inner[1]:
            return self.assemble(fn, len(self.axes), region)
        a, b = max(inner[0], lo), min(inner[1], hi)

        def at(r):
            return (*region[:k], r, *region[k + 1 :])

        parts = []
        if a > lo:
            parts.append(self.assemble(fn, len(self.axes), at((lo, a))))
        parts.append(self.assemble(fn, k + 1, at((a, b))))
        if b < hi:
            parts.append(self.assemble(fn, len(self.axes), at((b, hi))))
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], tuple):
            return tuple(jnp.concatenate(p, axis=self.axes[k]) for p in zip(*parts, strict=True))
        return jnp.concatenate(parts, axis=self.axes[k])


def stages(axes: Sequence[int], windows: Sequence[AxisWindows]) -> list[Stage]:
    """One stage for small windows; else one per axis, the last axis first."""
    if math.prod(w.taps for w in windows) <= _DIRECT_MAX_TAPS or len(axes) == 1:
        return [Stage(tuple(axes), tuple(windows))]
    return [Stage((a,), (w,)) for a, w in reversed(list(zip(axes, windows, strict=True)))]


# --------------------------------------------------------------------------------------------
# Large and tiling windows: one XLA window op, whatever the window size.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Box:
    """A plan whose windows are plain sliding windows on adjacent axes, as ``lax.reduce_window``
    takes them: per pooled axis the kernel, stride, dilation and (lo, hi) padding, after
    ``crop`` trailing cells that no window reads are sliced off."""

    axes: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    crop: tuple[int, ...]

    @property
    def tiles(self) -> bool:
        """Windows that tile the (cropped) axes exactly: a reshape and a reduction."""
        return all(
            k == s and d == 1 and p == (0, 0)
            for k, s, d, p in zip(self.kernel, self.stride, self.dilation, self.pad, strict=True)
        )

    def _spans(self, shape: tuple[int, ...]) -> list[bool]:
        return [
            k == shape[a] - c and p == (0, 0) and d == 1
            for a, k, c, p, d in zip(
                self.axes, self.kernel, self.crop, self.pad, self.dilation, strict=True
            )
        ]

    def whole(self, shape: tuple[int, ...]) -> bool:
        """Whether there is one window, over all the pooled axes (a global pool)."""
        return all(self._spans(shape))

    def spans_an_axis(self, shape: tuple[int, ...]) -> bool:
        """Whether the window covers at least one pooled axis whole."""
        return any(self._spans(shape))

    def window_args(self, ndim: int):
        dims, strides, dil, pads = [1] * ndim, [1] * ndim, [1] * ndim, [(0, 0)] * ndim
        for i, a in enumerate(self.axes):
            dims[a], strides[a], dil[a], pads[a] = (
                self.kernel[i],
                self.stride[i],
                self.dilation[i],
                self.pad[i],
            )
        return tuple(dims), tuple(strides), tuple(pads), tuple(dil)

    def cropped(self, x: jax.Array) -> jax.Array:
        for a, c in zip(self.axes, self.crop, strict=True):
            if c:
                x = lax.slice_in_dim(x, 0, x.shape[a] - c, axis=a)
        return x


def _box(plan: list[Stage]) -> _Box | None:
    """The plan as a ``_Box`` when every window is a plain sliding window (every windowed pool;
    adaptive pools whose windows tile the input) on adjacent axes, else None."""
    pairs = sorted((a, w) for st in plan for a, w in zip(st.axes, st.windows, strict=True))
    axes = tuple(a for a, _ in pairs)
    if list(axes) != list(range(axes[0], axes[0] + len(axes))):
        return None
    kernel, stride, dilation, pad, crop = [], [], [], [], []
    for _, w in pairs:
        regular = _regular(w)
        if regular is None:
            return None
        s, lo = regular
        span = (w.taps - 1) * w.dilation + 1
        hi = (w.out - 1) * s + span - w.length - lo
        if lo < 0:
            return None
        kernel.append(w.taps)
        stride.append(s)
        dilation.append(w.dilation)
        pad.append((lo, max(hi, 0)))
        crop.append(max(-hi, 0))
    return _Box(axes, tuple(kernel), tuple(stride), tuple(dilation), tuple(pad), tuple(crop))


def _large_box(plan: list[Stage]) -> _Box | None:
    """A ``_Box`` for plans that the tap engine would state with many taps (windows of more than
    ``_BOX_MIN_CELLS`` cells), else None: small windows keep the tap engine, which runs faster
    on CPU (a 2x2 average pool by 15-20%)."""
    box = _box(plan)
    if box is None or math.prod(box.kernel) <= _BOX_MIN_CELLS:
        return None
    return box


def _tiled(x: jax.Array, box: _Box) -> tuple[jax.Array, tuple[int, ...]]:
    """x with every pooled axis split into (outputs, kernel); returns it and the kernel axes."""
    shape, kernel_axes = [], []
    for a, d in enumerate(x.shape):
        if a in box.axes:
            k = box.kernel[box.axes.index(a)]
            shape += [d // k, k]
            kernel_axes.append(len(shape) - 1)
        else:
            shape.append(d)
    return x.reshape(shape), tuple(kernel_axes)


def _box_sum(x: jax.Array, box: _Box) -> jax.Array:
    """Window sums (padding reads 0) by one reduction: differentiable by JAX's own rules."""
    x = box.cropped(x)
    if box.tiles:
        y, kernel_axes = _tiled(x, box)
        return jnp.sum(y, axis=kernel_axes)
    dims, strides, pads, dil = box.window_args(x.ndim)
    # A concrete identity (not a traced one): JAX then differentiates the window sum itself.
    zero = np.zeros((), x.dtype)
    return lax.reduce_window(x, zero, lax.add, dims, strides, pads, window_dilation=dil)


def _box_value(x: jax.Array, box: _Box, largest: bool) -> jax.Array:
    """The extreme of each window (padding reads the identity), NaN-propagating."""
    x = box.cropped(x)
    dims, strides, pads, dil = box.window_args(x.ndim)
    op = lax.max if largest else lax.min
    identity = np.asarray(_identity(x.dtype, largest), x.dtype)
    return lax.reduce_window(x, identity, op, dims, strides, pads, window_dilation=dil)


_NO_CELL = np.iinfo(np.int32).max


def _box_winner(x: jax.Array, box: _Box, largest: bool) -> tuple[jax.Array, jax.Array]:
    """(extreme, flat row-major index over the pooled axes of the winner) of each window, by one
    variadic window reduction whose order is PyTorch's scan: the last NaN if any, else the
    first extreme; padding never wins (index ``_NO_CELL`` where a window has no cell)."""
    # Flat positions in x as given (before the crop), so that t can be gathered at them.
    lengths = tuple(x.shape[a] for a in box.axes)
    flat = None
    for i, length in enumerate(lengths):
        iota = lax.broadcasted_iota(jnp.int32, lengths, i)
        flat = iota if flat is None else flat * length + iota
    flat = flat.reshape([x.shape[a] if a in box.axes else 1 for a in range(x.ndim)])
    index = box.cropped(jnp.broadcast_to(flat, x.shape))
    x = box.cropped(x)
    floating = jnp.issubdtype(x.dtype, jnp.floating)

    def pick(a, b):
        (va, ia), (vb, ib) = a, b
        better = (vb > va) if largest else (vb < va)
        take = better | ((vb == va) & (ib < ia))
        if floating:
            na, nb = jnp.isnan(va), jnp.isnan(vb)
            take = jnp.where(na | nb, nb & (~na | (ib > ia)), take)
        return jnp.where(take, vb, va), jnp.where(take, ib, ia)

    identity = np.asarray(_identity(x.dtype, largest), x.dtype)
    init = (identity, np.asarray(_NO_CELL, np.int32))
    if box.whole(x.shape):  # one window over the whole axes: a reduce (cheaper to compile)
        a0, a1 = box.axes[0], box.axes[-1]
        view = (math.prod(x.shape[:a0]), -1, math.prod(x.shape[a1 + 1 :]))
        out_shape = tuple(1 if a in box.axes else d for a, d in enumerate(x.shape))
        value, win = lax.reduce((x.reshape(view), index.reshape(view)), init, pick, (1,))
        return value.reshape(out_shape), win.reshape(out_shape)
    dims, strides, pads, dil = box.window_args(x.ndim)
    return lax.reduce_window((x, index), init, pick, dims, strides, pads, window_dilation=dil)


def _at_flat(t: jax.Array, box: _Box, win: jax.Array) -> jax.Array:
    """t at the flat pooled positions ``win`` (0 where win < 0): a gather, linear in t, whose
    transpose (the backward pass) adds each cotangent at its winner."""
    a0, a1 = box.axes[0], box.axes[-1]
    P, Q = math.prod(t.shape[:a0]), math.prod(t.shape[a1 + 1 :])
    t3 = t.reshape(P, -1, Q)
    w3 = win.reshape(P, -1, Q)
    got = jnp.take_along_axis(t3, jnp.maximum(w3, 0), axis=1, mode="clip")
    return jnp.where(w3 >= 0, got, jnp.zeros((), t.dtype)).reshape(win.shape)


def _box_select(x: jax.Array, box: _Box, largest: bool, floor: Any):
    """(extreme, winner): the winner -1 where the window has no cell or, with a ``floor``, where
    every value lies beyond it (then the extreme is the floor)."""
    best, win = _box_winner(x, box, largest)
    win = jnp.where(win == _NO_CELL, -1, win)
    if floor is not None:
        edge = jnp.asarray(floor, best.dtype)
        beyond = best < edge if largest else best > edge
        best = jnp.where(beyond, edge, best)
        win = jnp.where(beyond, -1, win)
    return best, win


def _to_floor(best: jax.Array, largest: bool, floor: Any) -> jax.Array:
    """``best`` with values beyond ``floor`` (Caffe's -FLT_MAX for max) set to it; as is for no
    floor."""
    if floor is None:
        return best
    edge = jnp.asarray(floor, best.dtype)
    return jnp.where(best < edge if largest else best > edge, edge, best)


def _whole_extreme(x: jax.Array, box: _Box, largest: bool, floor: Any) -> jax.Array:
    """The extreme of one window over all the pooled axes (a global pool): XLA's reduce, which
    costs what ``jnp.max`` does to compile (the variadic reduction that also finds the winner
    costs about twice as much), made NaN-exact by a test for NaN (XLA:CPU's reduce-max drops
    NaN)."""
    x = box.cropped(x)
    reduce = jnp.max if largest else jnp.min
    best = reduce(x, axis=box.axes, keepdims=True)
    best = jnp.where(jnp.any(jnp.isnan(x), axis=box.axes, keepdims=True), jnp.nan, best)
    return _to_floor(best, largest, floor)


def _box_extreme(x: jax.Array, box: _Box, largest: bool, floor: Any, want_index: bool):
    """``window_extreme`` by window ops: the value and the winner (for the gradient and the
    indices) one variadic window reduction, the tangent a gather at the winner."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        out, win = _box_select(x, box, largest, floor)
        return out, (win if want_index else None)

    @jax.custom_jvp
    def extreme(x):
        if box.whole(x.shape):
            return _whole_extreme(x, box, largest, floor)
        if box.spans_an_axis(x.shape):
            # Not ``lax.reduce_window``: XLA rewrites a window over a whole axis as a reduce,
            # which on CPU drops NaN.
            return _box_select(x, box, largest, floor)[0]
        return _to_floor(_box_value(x, box, largest), largest, floor)

    @extreme.defjvp
    def extreme_jvp(primals, tangents):
        best, win = _box_select(lax.stop_gradient(primals[0]), box, largest, floor)
        return best, _at_flat(tangents[0], box, win)

    index = _box_select(lax.stop_gradient(x), box, largest, floor)[1] if want_index else None
    return extreme(x), index


def window_sum(x: jax.Array, plan: list[Stage], scale: Any = None) -> jax.Array:
    """Sum over every window (padding reads 0), stage by stage, times ``scale`` (a constant
    broadcasting against the output, e.g. the reciprocal divisors of average pooling).

    The value is assembled
    region by region (``Stage.assemble``); the tangent is ``_linear_taps``, whose transpose
    (the backward pass) is ``_scatter_back``. Transposing the assembled form instead
    would add one full-size padded array per tap and region. Large and tiling windows are one
    window reduction instead (``_large_box``), whose cost of compiling does not grow with the
    window.
    """
    box = _large_box(plan)
    if box is not None:
        out = _box_sum(x, box)
        return out if scale is None else out * jnp.asarray(scale, out.dtype)

    @jax.custom_jvp
    def total(v):
        for stage in plan:
            v = stage.assemble(lambda st, _, v=v: functools.reduce(jnp.add, st.taps(v, 0)))
        return v if scale is None else v * jnp.asarray(scale, v.dtype)

    @total.defjvp
    def total_jvp(primals, tangents):
        t = tangents[0]
        for stage in plan:
            t = _linear_taps(stage, t, None)
        return total(primals[0]), t if scale is None else t * jnp.asarray(scale, t.dtype)

    return total(x)


# --------------------------------------------------------------------------------------------
# Max / min with one winner per window.
# --------------------------------------------------------------------------------------------


def _identity(dtype, largest: bool):
    """The value padding reads: -inf for max (+inf for min); integer extremes."""
    if jnp.issubdtype(dtype, jnp.floating):
        return -jnp.inf if largest else jnp.inf
    if dtype == jnp.bool_:
        return not largest
    info = jnp.iinfo(dtype)
    return info.min if largest else info.max


def _written_out(values: tuple[jax.Array, ...], x: jax.Array) -> tuple[jax.Array, ...]:
    """``values`` (computed from ``x``), written out to memory on CPU.

    Without this, XLA fuses the computation of a window's winner into every tap of the backward
    pass that reads it and recomputes it once per tap; a conditional is a fusion boundary XLA
    keeps (see ``_kernels._unfused``). Its branches only pass the values through: the
    computation stays outside, so JAX traces it once, where a conditional around it would be
    traced once per branch and partially evaluated again under ``grad`` (several times the
    trace time). Its predicate reads two cells of the input x, which is already in memory (two
    cells of a value would make XLA compute their windows apart, in small kernels of their
    own). Other platforms use the values as they are.
    """

    def barrier(v, *vs):
        flat = v.reshape(-1)
        return lax.cond(flat[0] > flat[-1], _pass, _negated_twice, *vs)

    return tuple(lax.platform_dependent(x, *values, cpu=barrier, default=lambda _, *vs: vs))


def _pass(*vs):
    return vs


def _negated_twice(*vs):
    # The identity, written so that JAX does not see a branch that forwards its operands (it
    # would drop the conditional, and with it the boundary).
    return tuple(lax.neg(lax.neg(v)) for v in vs)


def _select(
    stage: Stage,
    x: jax.Array,
    largest: bool,
    payloads: Sequence[jax.Array] = (),
    floor: Any = None,
):
    """(extreme, winning tap, payloads at the winner) over each window of the stage.

    The winner is PyTorch's: the first tap equal to the extreme in row-major order, or the last
    NaN; a window of -inf values (all taps equal to the padding) points at its first cell inside
    the input, where PyTorch starts its scan. With a ``floor`` (Caffe's -FLT_MAX), the extreme is
    clamped to it and a window whose taps all lie beyond it has no winner (-1: no gradient).
    """
    best, win = _written_out(stage.assemble(lambda st, _: _scan(st, x, largest, floor)), x)
    return best, win, [_pick(stage, p, win) for p in payloads]


def _winner(stage: Stage, x: jax.Array, largest: bool, floor: Any) -> jax.Array:
    """The winning tap of each window alone, written out (``_written_out``)."""
    win = stage.assemble(lambda st, _: _scan(st, x, largest, floor)[1])
    return _written_out((win,), x)[0]


def _scan(st: Stage, v: jax.Array, largest: bool, floor: Any):
    """(extreme, winner) by the tap engine from one set of taps: a running scan over the taps
    in row-major order that takes a tap strictly beyond the best so far, or a NaN (so the first
    extreme, or the last NaN; padding never wins)."""
    fill = _identity(v.dtype, largest)
    floating = jnp.issubdtype(v.dtype, jnp.floating)
    combos = st.combos
    idx_dtype = jnp.int8 if len(combos) < 127 else jnp.int32
    default = -1 if floor is not None else st.first_valid(v.ndim)
    best = lax.full(st.out_shape(v.shape), fill, v.dtype)
    if np.ndim(default):
        win = lax.broadcast_in_dim(
            jnp.asarray(default, idx_dtype), best.shape, tuple(range(best.ndim))
        )
    else:
        win = lax.full(best.shape, default, idx_dtype)
    # lax primitives, not jnp: this loop runs once per tap and region, and jnp's wrappers cost
    # several times more to trace and linearize.
    for t, combo in enumerate(combos):
        tap = st.tap(v, combo, fill)
        value = nan_test = tap
        if floating and st.reads_padding(combo):
            # XLA writes out a padded tap that several ops of a fusion read, as a kernel of
            # its own (a pad opens a branch, so its value is not reused), and merges equal
            # taps, also those of the extreme (``_extreme``, the same fill): each op here reads
            # its own tap, with its own fill. The comparison's NaN never takes; the NaN test's
            # 0 and the select's 1 are read only where the comparison is false.
            tap = st.tap(v, combo, np.nan)
            nan_test, value = st.tap(v, combo, 0), st.tap(v, combo, 1)
        take = lax.gt(tap, best) if largest else lax.lt(tap, best)
        if floating:
            take = lax.bitwise_or(take, lax.ne(nan_test, nan_test))
        best = lax.select(take, value, best)
        win = lax.select(take, lax.full(best.shape, t, idx_dtype), win)
    return _to_floor(best, largest, floor), win


def _winner_tangent(stage: Stage, t: jax.Array, win: jax.Array) -> jax.Array:
    """The tangent of a window extreme: the tangent of each window's winning tap."""
    return _linear_taps(stage, t, win)


def _pick(stage: Stage, p: jax.Array, win: jax.Array) -> jax.Array:
    """The stage taps of ``p`` at tap ``win`` (0 where win matches no tap)."""
    out = None
    for t, combo in enumerate(stage.combos):
        pv = jnp.where(win == t, stage.tap(p, combo, 0), 0)
        out = pv if out is None else out + pv
    return out


def _acc(dtype):
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _linear_taps(stage: Stage, t: jax.Array, win: jax.Array | None) -> jax.Array:
    """The linear map ``t -> sum of the stage taps of t`` (only tap ``win`` where given).

    It is the tangent of a window sum (win None) or of a window max (the winner's tangent),
    written as the transpose of ``_scatter_back``. Reverse mode transposes it once more and so
    runs ``_scatter_back`` itself: slices and concatenations, where JAX's own transpose of the
    strided, padded tap slices is a sum of padded arrays that XLA:CPU emits element by element
    (slower). Being made of ordinary ops, it works under jvp, vmap and every order.
    """
    dtype = t.dtype
    acc = _acc(dtype)
    out_shape = stage.out_shape(t.shape)
    t = t.astype(acc)
    if not all(_regular(w) for w in stage.windows):  # irregular (adaptive) windows
        out = functools.reduce(jnp.add, stage.taps(t, 0)) if win is None else _pick(stage, t, win)
        return out.astype(dtype)
    (out,) = jax.linear_transpose(
        lambda g: _scatter_back(stage, g, win, t.shape), jax.ShapeDtypeStruct(out_shape, acc)
    )(t)
    return out.astype(dtype)


def _regular(w: AxisWindows) -> tuple[int, int] | None:
    """(stride, left padding) of windows that are a plain strided sliding window, else None."""
    if w.out == 0 or not (w.size == w.taps).all():
        return None
    stride = int(w.base[1] - w.base[0]) if w.out > 1 else 1
    if stride < 1 or not np.array_equal(w.base, w.base[0] + stride * np.arange(w.out)):
        return None
    return stride, int(-w.base[0])


def _scatter_back(
    stage: Stage, g: jax.Array, win: jax.Array | None, in_shape: tuple[int, ...]
) -> jax.Array | None:
    """``dx[src_t(i)] += g[i]`` over the taps t (only t == win[i] where given), without pads.

    Along an axis with stride s, left padding lo and dilation d, tap j of output i reads
    ``u = i s + j d`` (u = h + lo). Split u by its phase ``r = u mod s``: u = q s + r is read
    by the taps j with ``j d = r (mod s)``, from output ``i = q - (j d - r) / s``. So each
    phase of dx is itself a small window sum over g (and the winners), with unit stride; it is
    computed by ``Stage.assemble`` (interior slices, thin borders), and the phases are
    interleaved back by a stack and a reshape. Returns None for irregular (adaptive) windows.
    """
    specs = []
    for axis, w in zip(stage.axes, stage.windows, strict=True):
        regular = _regular(w)
        if regular is None:
            return None
        s, lo = regular
        d, k, length = w.dilation, w.taps, w.length
        Q = -(-(length + lo) // s)
        phases = []
        for r in range(s):
            js = [j for j in range(k) if (j * d) % s == r]
            if not js:
                phases.append(None)
                continue
            ms = [(j * d - r) // s for j in js]
            step = d // math.gcd(d, s)
            # Positions q - m_j, ascending: tap k' reads g at q - m_max + k' step.
            base = np.arange(Q, dtype=np.int64) - ms[-1]
            tw = AxisWindows(w.out, base, np.full(Q, len(js), np.int64), step)
            phases.append((tw, js[::-1]))
        specs.append((axis, s, lo, Q, phases))

    sizes = [w.taps for w in stage.windows]
    results = {}
    for combo in itertools.product(*(range(spec[1]) for spec in specs)):
        parts = [spec[4][r] for spec, r in zip(specs, combo, strict=True)]
        if any(p is None for p in parts):
            shape = list(g.shape)
            for (axis, _, _, Q, _), _p in zip(specs, parts, strict=True):
                shape[axis] = Q
            results[combo] = jnp.zeros(shape, g.dtype)
            continue
        tstage = Stage(stage.axes, tuple(p[0] for p in parts))
        originals = [p[1] for p in parts]

        def phase_sum(st, _, originals=originals):
            # lax primitives, not jnp: traced once per tap and region (see _scan).
            total = None
            for tcombo in st.combos:
                gv = st.tap(g, tcombo, 0)
                if win is not None:
                    j = [orig[c] for orig, c in zip(originals, tcombo, strict=True)]
                    t = sum(jj * math.prod(sizes[i + 1 :]) for i, jj in enumerate(j))
                    wv = st.tap(win, tcombo, -1)
                    hit = lax.eq(wv, lax.full(wv.shape, t, wv.dtype))
                    gv = lax.select(hit, gv, lax.full(gv.shape, 0, gv.dtype))
                total = gv if total is None else lax.add(total, gv)
            return total

        results[combo] = tstage.assemble(phase_sum)

    # Interleave the phases axis by axis: (.., Q, s, ..) -> (.., Q s, ..) -> [lo, lo + L).
    for n, (axis, s, lo, _Q, _) in enumerate(specs):
        merged = {}
        for rest in itertools.product(*(range(spec[1]) for spec in specs[n + 1 :])):
            arrays = [results[(r, *rest)] for r in range(s)]
            y = arrays[0] if s == 1 else jnp.stack(arrays, axis=axis + 1)
            if s > 1:
                shape = list(y.shape)
                shape[axis : axis + 2] = [shape[axis] * s]
                y = y.reshape(shape)
            y = lax.slice_in_dim(y, lo, lo + in_shape[axis], axis=axis)
            merged[rest] = y
        results = merged
    return results[()]


def _clamped(w: AxisWindows) -> list[np.ndarray] | None:
    """Per tap, the input position each output reads with positions outside x (or past a short
    window's end) moved to the nearest cell of the same window; None where that cell is not
    always one of the window's (a dilated window that starts in the padding, a window with no
    cell). Reading a window's own cell twice leaves its extreme as it is."""
    if w.out == 0:
        return None
    j = np.arange(w.taps)[:, None]
    last = w.base + (w.size - 1) * w.dilation
    pos = np.clip(np.minimum(w.base + j * w.dilation, last), 0, w.length - 1)
    step = pos - w.base
    ok = (step % w.dilation == 0) & (step // w.dilation < w.size) & (step >= 0)
    if not ok.all() or empty_windows(w).any():
        return None
    return list(pos)


# Strided windows keep the regions: their clamped reads are gathers whose last index breaks the
# stride, which ran up to 10% slower on NIN's 3x3/2 pools (16x16x192) for little compile time
# saved (benchmarks/window_formulations.py).
_CLAMP_STRIDED = False


def _extreme(stage: Stage, x: jax.Array, largest: bool, floor: Any = None) -> jax.Array:
    """The extreme of each window only (NaN-propagating maximum/minimum): the fast forward.
    With a ``floor``, values beyond it become it, in the same loop (a separate ``where`` on the
    output would be a second pass, which XLA does not fuse into the concatenated regions).

    Where every window's reads can be clamped into the window (``_clamped``: windows without
    dilation, and most others) and the stride is 1, the taps read x at the clamped positions:
    one loop over the whole output, which XLA compiles in about half the time of the regions of
    ``Stage.assemble`` and runs as fast (benchmarks/window_formulations.py)."""
    fill = _identity(x.dtype, largest)
    op = jnp.maximum if largest else jnp.minimum
    clamped = [_clamped(w) for w in stage.windows]
    strided = any((_regular(w) or (1, 0))[0] > 1 for w in stage.windows)
    if all(c is not None for c in clamped) and (_CLAMP_STRIDED or not strided):
        # Every position is inside x: ``take_taps`` reads each tap as slices or gathers, no pad.
        taps = [
            take_taps(
                x, [(a, c[j]) for a, c, j in zip(stage.axes, clamped, combo, strict=True)], fill
            )
            for combo in stage.combos
        ]
        return _to_floor(functools.reduce(op, taps), largest, floor)
    return stage.assemble(
        lambda st, _: _to_floor(functools.reduce(op, st.taps(x, fill)), largest, floor)
    )


def window_extreme(
    x: jax.Array, plan: list[Stage], *, largest: bool, want_index: bool, floor: Any = None
) -> tuple[jax.Array, jax.Array | None]:
    """Max (or min) over every window, gradient to one winner; optionally the winner's position.

    The position is the flat index of the winner in the input's pooled axes (row-major), as
    PyTorch's ``return_indices``; -1 for an empty window (Caffe's rule can make one). With a
    ``floor`` (Caffe starts from -FLT_MAX), results beyond it are clamped to it and get no
    gradient. Large windows are window reductions (``_box_extreme``), whose cost of compiling
    does not grow with the window.
    """
    box = _large_box(plan)
    if box is not None:
        return _box_extreme(x, box, largest, floor, want_index)
    out = x
    for n, stage in enumerate(plan):
        last = floor if n == len(plan) - 1 else None
        if jnp.issubdtype(x.dtype, jnp.floating):
            out = _differentiable_extreme(stage, largest, last)(out)
        else:
            out = _extreme(stage, out, largest, last)
    index = _winner_index(lax.stop_gradient(x), plan, largest) if want_index else None
    return out, index


def _differentiable_extreme(stage: Stage, largest: bool, floor: Any = None):
    """The stage's extreme with PyTorch's gradient: the tangent is the winner's tangent.

    A custom JVP whose tangent (``_winner_tangent``) is linear, so reverse mode transposes it
    into "send the cotangent to the winning tap" (``_scatter_back``); forward mode and every
    order work too. The winner (an int8 per output) is computed only when differentiating.
    """

    @jax.custom_jvp
    def extreme(x):
        return _extreme(stage, x, largest, floor)

    @extreme.defjvp
    def extreme_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        # The value from the extreme alone (XLA would otherwise compute the scan twice, once
        # for each output), the winner from the scan.
        best = _extreme(stage, x, largest, floor)
        return best, _winner_tangent(stage, t, _winner(stage, x, largest, floor))

    return extreme


def _winner_index(x: jax.Array, plan: list[Stage], largest: bool) -> jax.Array:
    """Flat spatial index (row-major) of each window's winner; -1 for an empty window."""
    spatial = sorted(a for stage in plan for a in stage.axes)
    strides = {a: math.prod(x.shape[b] for b in spatial if b > a) for a in spatial}
    coords = []
    for stage in plan:
        x, win, coords = _select(stage, x, largest, coords)
        for axis, w, j in _unravel(stage, win):
            base = jnp.asarray(w.base.reshape([-1 if i == axis else 1 for i in range(x.ndim)]))
            coords.append((base + j * w.dilation) * strides[axis])
    index = functools.reduce(jnp.add, coords)
    empty = _empty(plan, x.ndim)
    if empty is not None:
        index = jnp.where(empty, -1, index)
    return jnp.broadcast_to(index, x.shape).astype(jnp.int32)


def _unravel(stage: Stage, win: jax.Array):
    """Per-axis tap index of the winning row-major tap ``win``."""
    sizes = [w.taps for w in stage.windows]
    rest = win.astype(jnp.int32)
    out = []
    for i in reversed(range(len(sizes))):
        out.append((stage.axes[i], stage.windows[i], rest % sizes[i]))
        rest = rest // sizes[i]
    return out


def _empty(plan: list[Stage], ndim: int) -> np.ndarray | None:
    """Where a window has no cell inside the input (only Caffe's output rule makes these)."""
    empty = None
    for stage in plan:
        e = stage.first_valid(ndim) < 0
        if e.any():
            empty = e if empty is None else (empty | e)
    return empty


def check_convention(convention: str, fn: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"{fn}: convention must be one of {CONVENTIONS}, got {convention!r}.")
