"""Spatial reductions behind the global pooling functions (private).

``spatial_sum``, ``spatial_mean``, ``spatial_max`` and ``spatial_min`` compute what ``jnp.sum`` /
``jnp.mean`` / ``jnp.max`` / ``jnp.min`` over ``axes`` compute (sums within float32 rounding; max
and min exactly, NaN-propagating), under ``jit``, ``vmap``, ``grad`` (any order) and ``jvp``.
On GPU and TPU they are the plain ``jnp`` reductions. On CPU (chosen at lowering time with
``lax.platform_dependent``) two things differ, and only where
``benchmarks/results/formulations_cpu.md`` (``python benchmarks/formulations.py``) shows a win:

- Channels-last float32 sums with >= 40K elements per batch run as a batched matrix-vector
  product with a ones vector: XLA:CPU's strided reduce reads such rows at a fraction of memory
  bandwidth, Eigen's product at about all of it.
- XLA:CPU's reduce-max (YNNPACK) drops NaN. Channels-last float32 max runs as balanced
  elementwise ``jnp.maximum`` trees (NaN-propagating, as fast as the reduce); other layouts and
  16-bit floats keep the fast reduce plus a sum that is NaN wherever a NaN was dropped, and only
  then (``lax.cond``) the exact per-element test.

Every reduction is first collapsed to axis 1 of ``(P, R, Q)``: channels last is ``Q > 1``,
channels first is ``Q == 1``; axes that do not collapse (e.g. (1, 3) of a 4-D array) use
``jnp``.

Gradients are custom JVPs whose tangents are plain ``jnp`` expressions, so reverse mode
transposes them to a broadcast (sum, mean) or to ``where(position == index, g, 0)`` (max,
min): one write of dx. The max rule is PyTorch's (and ``max_pool``'s): the whole cotangent goes
to the first maximum in row-major order of the pooled positions, or to the first NaN. Its index
comes from one extra pass over x after the max (``_first_hit``), faster than ``jax.vjp`` of
``jnp.max``, which splits the cotangent among ties and reads x again.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

__all__ = ["spatial_max", "spatial_mean", "spatial_min", "spatial_sum"]

# Below this many elements XLA's own emitters handle reductions well; the dot and tree
# formulations only add overhead.
_MIN_ELEMENTS = 4096
# Below this many elements the max's index is one plain pass (``_first_max_or_nan``): what the
# chunked pass saves at run time there is less than what it costs to compile.
_INDEX_PASS_MIN_ELEMENTS = 2**18
# Channels-last sums use the batched dot when one batch holds at least this many elements.
_DOT_MIN_BATCH_ELEMENTS = 40960
# Widen rows of the batched dot to about this many elements, keeping at least _DOT_MIN_ROWS rows.
_DOT_ROW_WIDTH = 2048
_DOT_MIN_ROWS = 64
# Max tree: fan-in of each stage, and the number of rows reduced by the final tree.
_TREE_FANIN = 16
_TREE_FINAL = 16


# --------------------------------------------------------------------------------------------
# Shapes.
# --------------------------------------------------------------------------------------------


def _normalize_axes(ndim: int, axes: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(axes, int):
        axes = (axes,)
    out = sorted({int(a) % ndim if ndim else int(a) for a in axes})
    return tuple(out)


def _collapse(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(P, R, Q)`` with ``x.reshape(P, R, Q)`` reducing axis 1, or None if ``axes`` (ignoring
    size-1 dimensions) do not form one contiguous block."""
    reduced = [i for i in axes if shape[i] != 1]
    if not reduced:
        return None
    lo, hi = reduced[0], reduced[-1]
    if any(shape[i] != 1 and i not in axes for i in range(lo, hi + 1)):
        return None
    P = math.prod(shape[:lo])
    R = math.prod(shape[lo : hi + 1])
    Q = math.prod(shape[hi + 1 :])
    return P, R, Q


def _out_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _acc_dtype(dtype) -> np.dtype:
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _fast_path(x: jax.Array, axes: tuple[int, ...]) -> tuple[int, int, int] | None:
    if x.size < _MIN_ELEMENTS:
        return None
    return _collapse(x.shape, axes)


# --------------------------------------------------------------------------------------------
# Sum.
# --------------------------------------------------------------------------------------------


def _plain_sum(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    return jnp.sum(x, axis=axes, dtype=_acc_dtype(x.dtype))


def _dot_plan(P: int, R: int, Q: int) -> tuple[int, int]:
    """(k, s) for the channels-last batched dot: rows widened by k, each batch split in s."""
    k = 1
    if Q < _DOT_ROW_WIDTH:
        for d in _divisors(R):
            if R // d < _DOT_MIN_ROWS:
                break
            k = d
            if d * Q >= _DOT_ROW_WIDTH:
                break
    # Give the thread pool at least 8 independent matrices.
    s = 1
    if P < 8:
        for d in _divisors(R // k):
            if R // (k * d) < _DOT_MIN_ROWS:
                break
            s = d
            if P * d >= 8:
                break
    return k, s


def _batched_dot_sum(x3: jax.Array, P: int, R: int, Q: int) -> jax.Array:
    """sum over axis 1 of (P, R, Q) as ones(1, r) @ (r, k Q) per batch (see module docstring)."""
    k, s = _dot_plan(P, R, Q)
    r = R // (k * s)
    rows = x3.reshape(P * s, r, k * Q)
    ones = jnp.ones((P * s, 1, r), x3.dtype)
    y = jnp.matmul(ones, rows, precision=lax.Precision.HIGHEST)  # (P s, 1, k Q)
    y = y.reshape(P, s * k, Q)
    return y[:, 0] if s * k == 1 else jnp.sum(y, axis=1)


def _sum_plan(x: jax.Array, axes: tuple[int, ...]) -> str:
    """Which CPU formulation sums x over axes: "plain" (``jnp.sum``) or "dot"."""
    prq = _fast_path(x, axes)
    if prq is None or x.dtype != jnp.float32:
        return "plain"
    _, R, Q = prq
    if Q == 1:
        return "plain"
    return "dot" if R * Q >= _DOT_MIN_BATCH_ELEMENTS and R >= 16 else "plain"


def _divide(total: jax.Array, divisor: int) -> jax.Array:
    return total if divisor == 1 else total / jnp.asarray(divisor, total.dtype)


def _cpu_sum(x: jax.Array, axes: tuple[int, ...], divisor: int = 1) -> jax.Array:
    plan = _sum_plan(x, axes)
    out_shape = _out_shape(x.shape, axes)
    if plan == "plain":
        return _plain_mean(x, axes, divisor)
    P, R, Q = _collapse(x.shape, axes)
    y = _batched_dot_sum(x.reshape(P, R, Q), P, R, Q)
    return _divide(y.reshape(out_shape), divisor)


def _plain_mean(x: jax.Array, axes: tuple[int, ...], divisor: int = 1) -> jax.Array:
    return _divide(_plain_sum(x, axes), divisor)


def _platform_sum(x: jax.Array, axes: tuple[int, ...], divisor: int) -> jax.Array:
    return lax.platform_dependent(
        x,
        cpu=functools.partial(_cpu_sum, axes=axes, divisor=divisor),
        default=functools.partial(_plain_mean, axes=axes, divisor=divisor),
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _sum(x: jax.Array, axes: tuple[int, ...], divisor: int) -> jax.Array:
    """The sum of x over axes, divided by ``divisor`` (the mean: the count)."""
    return _platform_sum(x, axes, divisor)


@_sum.defjvp
def _sum_jvp(axes, divisor, primals, tangents):
    (x,), (t,) = primals, tangents
    return _sum(x, axes, divisor), _plain_mean(t, axes, divisor)


def spatial_sum(x: ArrayLike, axes: int | Sequence[int]) -> jax.Array:
    """``jnp.sum(x, axis=axes)``, accumulated in float32 for 16-bit floats (returned as float32).

    On CPU, large channels-last float32 sums run as a batched matrix-vector product with a ones
    vector (see the module docstring). A custom JVP makes the gradient a plain broadcast, never
    the transpose of that product; forward mode works too.
    """
    x = jnp.asarray(x)
    axes = _normalize_axes(x.ndim, axes)
    if not axes or not jnp.issubdtype(x.dtype, jnp.floating):
        return _plain_sum(x, axes)
    return _sum(x, axes, 1)


def spatial_mean(x: ArrayLike, axes: int | Sequence[int]) -> jax.Array:
    """``jnp.mean(x, axis=axes)``, in float32 for 16-bit floats: the sum divided by the count."""
    x = jnp.asarray(x)
    axes = _normalize_axes(x.ndim, axes)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.mean(x, axis=axes)
    count = math.prod(x.shape[a] for a in axes)
    if not count:
        return spatial_sum(x, axes) / 0
    return _sum(x, axes, count)


# --------------------------------------------------------------------------------------------
# Max.
# --------------------------------------------------------------------------------------------


def _balanced(parts: list, combine):
    """Balanced tree of an elementwise binary op (one XLA loop fusion, no reduce op)."""
    while len(parts) > 1:
        nxt = [combine(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def _chunk_stage(x3: jax.Array, leaf, combine, fanin: int) -> jax.Array:
    """(P, R, Q) -> (P, ceil(R / fanin), Q): combines ``fanin`` contiguous chunks of rows.

    Each chunk is one sequential stream, so the loop fusion reads ``fanin`` streams and writes
    ``1 / fanin`` of its input.
    """
    R = x3.shape[1]
    k = -(-R // fanin)
    full = R // k
    y = _balanced([leaf(x3[:, i * k : (i + 1) * k]) for i in range(full)], combine)
    r = R - full * k
    if r:
        y = jnp.concatenate([combine(y[:, :r], leaf(x3[:, full * k :])), y[:, r:]], axis=1)
    return y


def _reduce_rows(x3: jax.Array, leaf, combine, finish) -> jax.Array:
    """Reduction of ``leaf(x3)`` over axis 1 of (P, R, Q): elementwise ``combine`` trees down to
    at most 16 rows, then ``finish`` (a reduce op over axis 1 of those few rows).

    Ending with a reduce op matters: XLA does not fuse a reduce into its consumers, while a
    tree of elementwise ops would be fused (recomputed) into every element of a broadcast
    consumer such as the gradient ``where(x == max, g / count, 0)``: R times the work.
    """
    y = x3
    while y.shape[1] > _TREE_FINAL or (y is x3 and y.shape[1] > 2):
        # Each stage is one loop fusion reading fanin sequential streams.
        y = _chunk_stage(y, leaf, combine, fanin=min(_TREE_FANIN, -(-y.shape[1] // 2)))
        leaf = _identity
    if y is x3:
        return finish(leaf(y))
    return _unfused(finish, y)


def _unfused(fn, y: jax.Array) -> Any:
    """``fn(y)`` with y materialized: XLA would otherwise fuse the tree computing y into the
    reduce in fn, whose emitter then runs slower than the tree alone. A conditional is a fusion
    boundary that XLA keeps (``optimization_barrier`` is not, on CPU); the predicate is
    data-dependent so it is not folded away, and both branches compute the same thing."""
    flat = y.reshape(-1)
    return lax.cond(flat[0] > flat[-1], fn, fn, y)


def _identity(v):
    return v


def _nan_max(a, b):
    """max(a, b), NaN if either is NaN, in a form YNNPACK does not pattern-match as reduce-max."""
    return jnp.where(jnp.isnan(a) | (a > b), a, b)


def _finish_max(y: jax.Array) -> jax.Array:
    return lax.reduce(y, jnp.asarray(-jnp.inf, y.dtype), _nan_max, (1,))


def _tree_max(x3: jax.Array) -> jax.Array:
    """Max over axis 1 of (P, R, Q); XLA's elementwise maximum propagates NaN."""
    return _reduce_rows(x3, _identity, jnp.maximum, _finish_max)


def _nan_exact(x: jax.Array, m: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    return jnp.where(jnp.any(jnp.isnan(x), axis=axes), jnp.asarray(jnp.nan, m.dtype), m)


def _cpu_max(x: jax.Array, axes: tuple[int, ...], negated: bool = False) -> jax.Array:
    """The NaN-exact max of x over axes on CPU; ``negated``: x is the negation of the array
    whose min the caller wants (XLA rewrites max(-x) as a min, which drops NaN even for 16-bit
    floats, whose reduce-max keeps it)."""
    prq = _collapse(x.shape, axes) if x.size else None
    half = x.dtype.itemsize < 4
    if half and not negated:
        # XLA:CPU reduces 16-bit floats in float32 and its reduce-max keeps NaN
        # (tests/pooling/test_kernels.py checks it); its own loops run them many times slower.
        return jnp.max(x, axis=axes)
    if prq is None:
        return _nan_exact(x, jnp.max(x, axis=axes), axes)
    P, R, Q = prq
    out_shape = _out_shape(x.shape, axes)
    if not half and (Q > 1 or x.size < _MIN_ELEMENTS):
        return _tree_max(x.reshape(P, R, Q)).reshape(out_shape)
    # Contiguous rows, where the trees vectorize badly (and 16-bit minima): the reduce, plus a
    # sum that is NaN wherever a NaN was dropped (or, rarely, where infinities meet or the sum
    # overflows: then the exact test runs).
    x3 = x.reshape((P, R, Q) if Q > 1 else (P, R))
    m = jnp.max(x3, axis=1).reshape(out_shape)
    suspicious = jnp.any(jnp.isnan(jnp.sum(x3, axis=1)))
    return lax.cond(suspicious, lambda: _nan_exact(x, m, axes), lambda: m)


def _view(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """x as ``(P, R, Q)`` (channels last), ``(P, R)`` (contiguous rows) reducing axis 1, with R
    the pooled positions in row-major order; axes that do not collapse are moved last first."""
    prq = _collapse(x.shape, axes)
    if prq is None:
        ends = tuple(range(x.ndim - len(axes), x.ndim))
        x = jnp.moveaxis(x, axes, ends)
        prq = (
            math.prod(x.shape[: x.ndim - len(axes)]),
            math.prod(x.shape[x.ndim - len(axes) :]),
            1,
        )
    P, R, Q = prq
    return x.reshape((P, R, Q) if Q > 1 else (P, R))


def _first_hit(x3: jax.Array, m: jax.Array) -> jax.Array:
    """int32 index along axis 1 of the first element not below ``m``, the maximum over axis 1
    (so: the first maximum), for columns without NaN; R where none is (a NaN column).

    Rows are split into 16 contiguous chunks, as in the max trees: one loop fusion reads the
    16 sequential streams and writes, per row position j, the first chunk whose row j is a
    maximum, as an int8 (1/64 of x's bytes); the int32 index c k + j is formed on that. Where
    ``jnp.argmax`` (XLA's variadic reduce) takes 16x longer than the max tree, this takes about
    as long as the tree itself.
    """
    R = x3.shape[1]
    mb = jnp.expand_dims(m, 1)
    if R <= _TREE_FINAL:
        iota = lax.broadcasted_iota(jnp.int32, x3.shape, 1)
        return jnp.min(jnp.where(x3 < mb, R, iota), axis=1)
    k = -(-R // _TREE_FANIN)
    full = R // k
    none = jnp.int8(_TREE_FANIN + 1)

    def leaf(c: int, v: jax.Array) -> jax.Array:
        return jnp.where(v < mb, none, jnp.int8(c))

    chunk = _balanced([leaf(c, x3[:, c * k : (c + 1) * k]) for c in range(full)], jnp.minimum)
    r = R - full * k
    if r:  # The remainder rows are chunk ``full``, row j < r.
        tail = jnp.minimum(chunk[:, :r], leaf(full, x3[:, full * k :]))
        chunk = jnp.concatenate([tail, chunk[:, r:]], axis=1)
    chunk = _unfused(_identity, chunk)
    iota = lax.broadcasted_iota(jnp.int32, chunk.shape, 1)
    index = jnp.where(chunk == none, R, chunk.astype(jnp.int32) * k + iota)
    return _reduce_rows(index, _identity, jnp.minimum, functools.partial(jnp.min, axis=1))


def _first_hit_code(x3: jax.Array, m: jax.Array) -> jax.Array:
    """``_first_hit`` for 16-bit floats and R < 2**15: an int16 code R - r at the maxima (0
    elsewhere), reduced by one max: XLA's strided loops run many times slower on 16-bit floats
    than on float32, while this fused map-and-reduce does not."""
    R = x3.shape[1]
    mb = jnp.expand_dims(m, 1)
    r = lax.broadcasted_iota(jnp.int16, x3.shape, 1)
    code = jnp.where(x3 < mb, jnp.int16(0), jnp.int16(R) - r)
    return R - jnp.max(code, axis=1).astype(jnp.int32)


def _first_max_or_nan(x3: jax.Array, m: jax.Array) -> jax.Array:
    """The exact rule: index of the first element equal to m, or of the first NaN."""
    mb = jnp.expand_dims(m, 1)
    iota = lax.broadcasted_iota(jnp.int32, x3.shape, 1)
    hit = (x3 == mb) | jnp.isnan(x3)
    return jnp.min(jnp.where(hit, iota, x3.shape[1]), axis=1)


def _cpu_argmax(x: jax.Array, m: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    x3 = _view(x, axes)
    m = m.reshape(x3.shape[:1] + x3.shape[2:])
    if x.size < _INDEX_PASS_MIN_ELEMENTS:
        return _first_max_or_nan(x3, m)
    fast = _first_hit_code if x.dtype.itemsize < 4 and x3.shape[1] < 2**15 else _first_hit
    # A NaN column (rare) takes the exact full-size pass; the others the fast one.
    return lax.cond(jnp.any(jnp.isnan(m)), _first_max_or_nan, fast, x3, m)


def _at_index(t: jax.Array, index: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``t`` at the flat pooled position ``index``: a one-hot sum over the pooled axes, linear in
    t, whose transpose (the backward pass) writes ``where(position == index, g, 0)``: one write
    of dx, reading neither x nor t. Float32 on CPU uses the native window passes
    (``_native.window_map`` with one window over the pooled positions): its backward pass
    writes dx in one native pass (on huge pages where the output is large)."""
    t3 = _view(t, axes)
    one_hot = lax.broadcasted_iota(jnp.int32, t3.shape, 1) == jnp.expand_dims(
        index.reshape(t3.shape[:1] + t3.shape[2:]), 1
    )
    picked = jnp.sum(jnp.where(one_hot, t3, jnp.zeros((), t3.dtype)), axis=1)
    return picked.reshape(index.shape)


def _cpu_extreme(x: jax.Array, axes: tuple[int, ...], largest: bool) -> jax.Array:
    return _cpu_max(x, axes) if largest else -_cpu_max(-x, axes, negated=True)


def _plain_extreme(x: jax.Array, axes: tuple[int, ...], largest: bool) -> jax.Array:
    return jnp.max(x, axis=axes) if largest else jnp.min(x, axis=axes)


def _platform_extreme(x: jax.Array, axes: tuple[int, ...], largest: bool) -> jax.Array:
    return lax.platform_dependent(
        x,
        cpu=functools.partial(_cpu_extreme, axes=axes, largest=largest),
        default=functools.partial(_plain_extreme, axes=axes, largest=largest),
    )


def _cpu_extreme_index(x: jax.Array, axes: tuple[int, ...], largest: bool):
    sign = 1 if largest else -1
    m = sign * _cpu_max(sign * x, axes, negated=not largest)
    return m, _cpu_argmax(sign * x, sign * m, axes).reshape(m.shape)


def _plain_extreme_index(x: jax.Array, axes: tuple[int, ...], largest: bool):
    m = _plain_extreme(x, axes, largest)
    if x.size == 0:
        return m, jnp.zeros(m.shape, jnp.int32)
    # jnp.argmax / argmin: the first extreme, or the first NaN.
    pick = jnp.argmax if largest else jnp.argmin
    return m, pick(_view(x, axes), axis=1).astype(jnp.int32).reshape(m.shape)


def _extreme_index(x: jax.Array, axes: tuple[int, ...], largest: bool):
    """(max or min over axes, flat row-major index over axes of the first extreme or first NaN).

    Not differentiable (computed from ``stop_gradient(x)``); on CPU one native pass.
    """
    x = lax.stop_gradient(x)
    return lax.platform_dependent(
        x,
        cpu=functools.partial(_cpu_extreme_index, axes=axes, largest=largest),
        default=functools.partial(_plain_extreme_index, axes=axes, largest=largest),
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _extreme(x: jax.Array, axes: tuple[int, ...], largest: bool) -> jax.Array:
    return _platform_extreme(x, axes, largest)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _known(x: jax.Array, m: jax.Array, index: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``m``, known to be x at the flat pooled position ``index``: the derivative is the tangent
    at that position (and so on, to every order)."""
    del x, index
    return m


@_known.defjvp
def _known_jvp(axes, primals, tangents):
    x, m, index = primals
    return _known(x, m, index, axes), _at_index(tangents[0], index, axes)


@_extreme.defjvp
def _extreme_jvp(axes, largest, primals, tangents):
    (x,), (t,) = primals, tangents
    m, index = _extreme_index(x, axes, largest)
    return _known(x, m, index, axes), _at_index(t, index, axes)


def spatial_max(x: ArrayLike, axes: int | Sequence[int]) -> jax.Array:
    """``jnp.max(x, axis=axes)`` in x's dtype, NaN-propagating, with PyTorch's gradient.

    On CPU, XLA's float32 reduce-max drops NaN: channels last runs as elementwise max trees
    instead, other layouts as the reduce plus a NaN check (see the module docstring). The
    gradient sends the whole cotangent to the first maximum (row-major over ``axes``), or to the
    first NaN; it is a custom JVP, so forward mode and higher orders work.
    """
    x = jnp.asarray(x)
    axes = _normalize_axes(x.ndim, axes)
    if not axes or not jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.max(x, axis=axes)
    return _extreme(x, axes, True)


def spatial_min(x: ArrayLike, axes: int | Sequence[int]) -> jax.Array:
    """``jnp.min(x, axis=axes)`` with ``spatial_max``'s NaN rule, gradient and speed."""
    x = jnp.asarray(x)
    axes = _normalize_axes(x.ndim, axes)
    if not axes or not jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.min(x, axis=axes)
    return _extreme(x, axes, False)
