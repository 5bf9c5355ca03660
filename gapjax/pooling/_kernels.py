"""Fast spatial reductions behind the global pooling functions (private).

``spatial_sum``, ``spatial_mean`` and ``spatial_max`` compute what ``jnp.sum`` / ``jnp.mean`` /
``jnp.max`` over ``axes`` compute (sums within float32 rounding; max exactly, NaN-propagating),
under ``jit``, ``vmap``, ``grad`` (any order) and ``jvp``. On GPU/TPU they *are* the plain ``jnp``
reductions. On CPU, XLA (jaxlib 0.10) hands reductions to YNNPACK, whose kernel for a reduction
over non-contiguous rows (channels last) runs at 1/3-1/2 of memory bandwidth, and whose reduce-max
silently drops NaN (``jnp.max`` on CPU returns a finite value, depending on where the NaN is). The
formulations below fix both. The choice is made per call from the static shape, and per platform
at lowering time (``lax.platform_dependent``), so a program lowered for GPU never sees them.

Channels-last sums and means of float32 and bfloat16 arrays on CPU go to the native sum kernel
of ``_native`` when it is built: rows read in order (sequential streams), column totals kept in
L1, bfloat16 widened to float32 on the fly, the mean's division done in the kernel. Contiguous
rows (channels first) keep the formulations below, which read them as fast; the XLA
formulations are also the fallback.

Max and min of float arrays on CPU go to the native kernel of ``_native`` when it is built
(``-march=native`` C++ through XLA's FFI): one pass over x gives the extreme and, when
differentiating, its position, faster than the formulations below and than PyTorch (the
committed runs of ``benchmarks/pooling.py`` in ``benchmarks/results/`` have the figures). The
XLA formulations below remain the fallback (no compiler, ``GAPJAX_NATIVE=0``) and give
identical results; the tests run both.

Every reduction is first collapsed to axis 1 of ``(P, R, Q)``: channels last is ``Q > 1``,
channels first is ``Q == 1``; axes that do not collapse (e.g. (1, 3) of a 4-D array) use ``jnp``.
Measured on a 2-core AMD EPYC VM, float32, ms per call, medians of interleaved rounds (this VM
drifts by +-30%; "yardstick" = ``jnp.sum`` over the whole array, i.e. memory bandwidth):

- Sum, Q > 1: a batched matrix-vector product ``ones(1, R/k) @ x.reshape(P, R/k, k Q)`` (XLA's
  Eigen dot: one task per batch, sequential reads), then a small sum over the k row groups.
  Rows are widened to k Q ~ 2048 elements keeping >= 64 of them, which is what Eigen's GEMV
  needs. Used when one batch holds >= 40K elements; below that the per-batch overhead eats the
  gain and ``jnp.sum`` stays. (128,32,32,64): ``jnp.sum`` 1.25, dot 0.70, yardstick 0.51;
  (64,56,56,256): 11.3-12.6 vs 6.5-6.8, yardstick 6.2-7.0; (32,7,7,2048): 0.18-0.29 vs
  0.11-0.13; (64,16,16,192) 0.35 vs 0.25; (128,14,14,256) 1.55 vs 1.10; kept: (256,8,8,192)
  0.18 vs 0.21, (128,16,16,96) 0.26-0.30 vs 0.36-0.58, (128,16,16,128) 0.43 vs 0.55. Tried
  and slower: einsum/dot_general with a ones vector (XLA transposes x), elementwise add trees,
  splitting P (each part's slice is copied), YNNPACK on widened rows.
- Sum, Q == 1: ``x.reshape(P, R) @ ones(R)`` for short rows (R <= 256): (32,2048,7,7) 0.13 vs
  0.20, (256,192,8,8) 0.12 vs 0.14. Longer rows: YNNPACK's contiguous reduce is at the yardstick.
- Max, Q > 1: balanced trees of elementwise ``jnp.maximum`` (XLA's own maximum propagates NaN)
  over 16 contiguous chunks of the rows: one loop fusion reading 16 sequential streams and
  writing 1/16 of its input, repeated, then a reduce op over the last <= 16 rows. The final
  reduce matters: a pure elementwise tree would be fused (recomputed, R times) into any
  broadcasting consumer, e.g. the gradient. (64,56,56,256): 8-11 vs ``jnp.max`` 11-14;
  (128,32,32,64): 1.1-1.5 vs 1.3-1.9 (both near PyTorch); small shapes equal.
- Max, Q == 1, or 16-bit floats: XLA's own loops vectorize badly there (Q == 1: 3-5x slower;
  bfloat16: 10-50x), so YNNPACK's reduce-max runs, plus a sum (NaN + anything is NaN) to find
  the NaN it dropped; only when some column sum is NaN (NaN, or +inf meeting -inf) does a
  ``lax.cond`` run the exact per-element ``isnan`` test.

Gradients: ``spatial_sum`` and ``spatial_max`` are ``jax.custom_jvp`` functions whose tangent is
a plain ``jnp`` expression, so reverse mode transposes it to a broadcast (sum) or to
``where(position == index, g, 0)`` (max), not to a dot or a tree. The max rule is PyTorch's
(and ``max_pool``'s): the whole cotangent goes to the first maximum in row-major order of the
pooled positions, or to the first NaN. Its index comes from ``_first_hit``, a second pass over x
after the max that writes one int8 chunk number per 16 elements (a ``lax.cond`` takes the exact
full-size rule when a column is NaN), so the backward pass is one write of dx that reads neither
x nor a tie count. (``jnp.max``'s own rule, splitting the cotangent among ties, needs the count
and a backward pass that reads x again; ``jnp.argmax``, XLA's variadic reduce, is 10-16x slower
than the max tree.) Forward+backward, ms, same run, glibc tuned as in README (no page faults):
(128,32,32,64) 4.9 vs 6.9 for the tie-count version and 2.9 for PyTorch; (64,56,56,256) 27.8 vs
35.0 and 13.9. PyTorch finds the max and its index in one pass, which XLA:CPU cannot fuse (it
splits the sibling outputs into two loops reading x); ``jax.vjp`` of ``jnp.max`` is 2-3x slower
again. Forward mode works (custom_jvp, not custom_vjp), and so does every order: the rule calls
``_max`` itself. For float32 on CPU the tangents (the mean's, and the max's at
its index) are ``_native.window_map`` gathers over one window covering the pooled positions, so
the backward passes are its native scatter: one write of dx, on huge pages where dx is large.
"""

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from gapjax.pooling import _native

__all__ = ["spatial_max", "spatial_mean", "spatial_min", "spatial_sum"]

# Below this many elements XLA's own emitters handle reductions well; the dot and tree
# formulations only add overhead.
_MIN_ELEMENTS = 4096
# Channels-last sums use the batched dot when one batch holds at least this many elements.
_DOT_MIN_BATCH_ELEMENTS = 40960
# Widen rows of the batched dot to about this many elements, keeping at least _DOT_MIN_ROWS rows.
_DOT_ROW_WIDTH = 2048
_DOT_MIN_ROWS = 64
# Channels-first sums use the matrix-vector product for at least this many rows of at most
# _GEMV_MAX_LENGTH elements (longer rows: YNNPACK's contiguous reduce is as fast or faster).
_GEMV_MIN_ROWS = 256
_GEMV_MAX_LENGTH = 256
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


def _native_sum_ok(x: jax.Array, axes: tuple[int, ...]) -> bool:
    """Whether x's CPU sum goes to the native kernel (decided at trace time): float32 or
    bfloat16 that collapses to (P, R, Q) with Q > 1 (channels last). Contiguous rows (Q == 1)
    stay with YNNPACK's reduce or the matrix-vector product, which read them as fast or faster
    (the kernel's contiguous path serves direct calls)."""
    prq = _fast_path(x, axes)
    if prq is None or not _native.sums(x.dtype) or not _native.available():
        return False
    return prq[2] > 1


def _sum_plan(x: jax.Array, axes: tuple[int, ...]) -> str:
    """Which CPU formulation sums x over axes: "native", "plain" (``jnp.sum``: YNNPACK), "gemv"
    or "dot"."""
    if _native_sum_ok(x, axes):
        return "native"
    prq = _fast_path(x, axes)
    if prq is None or x.dtype != jnp.float32:
        return "plain"
    P, R, Q = prq
    if Q == 1:
        return "gemv" if P >= _GEMV_MIN_ROWS and R <= _GEMV_MAX_LENGTH else "plain"
    return "dot" if R * Q >= _DOT_MIN_BATCH_ELEMENTS and R >= 16 else "plain"


def _divide(total: jax.Array, divisor: int) -> jax.Array:
    return total if divisor == 1 else total / jnp.asarray(divisor, total.dtype)


def _cpu_sum(x: jax.Array, axes: tuple[int, ...], divisor: int = 1) -> jax.Array:
    plan = _sum_plan(x, axes)
    out_shape = _out_shape(x.shape, axes)
    if plan == "native":  # the division happens in the kernel
        P, R, Q = _collapse(x.shape, axes)
        return _native.reduce_sum(x.reshape(P, R, Q), divisor=float(divisor)).reshape(out_shape)
    if plan == "plain":
        total = _plain_sum(x, axes)
        if divisor == 1 or not total.size:
            return _divide(total, divisor)
        # XLA would fuse the division into YNNPACK's reduction, which then runs 15-25% slower
        # ((256,8,8,192): 0.36 vs 0.30 ms with the division apart; the cond costs ~0.02).
        return _unfused(functools.partial(_divide, divisor=divisor), total)
    P, R, Q = _collapse(x.shape, axes)
    if plan == "gemv":
        y = jnp.matmul(x.reshape(P, R), jnp.ones((R,), x.dtype), precision=lax.Precision.HIGHEST)
    else:
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


def _sum_tangent(t: jax.Array, axes: tuple[int, ...], divisor: int) -> jax.Array:
    """The sum (or mean) of the tangent: the native window gather, whose transpose is the native
    broadcast of g / divisor, or a plain reduction, whose transpose is a broadcast too (not a
    dot)."""
    if _native_window_ok(t, axes):
        P, R, Q = _collapse(t.shape, axes)
        out = _native.window_map(t.reshape(P, R, Q), None, _global_window(R, divisor))
        return out.reshape(_out_shape(t.shape, axes))
    return _plain_mean(t, axes, divisor)


@_sum.defjvp
def _sum_jvp(axes, divisor, primals, tangents):
    (x,), (t,) = primals, tangents
    return _sum(x, axes, divisor), _sum_tangent(t, axes, divisor)


def spatial_sum(x: ArrayLike, axes: int | Sequence[int]) -> jax.Array:
    """``jnp.sum(x, axis=axes)``, accumulated in float32 for 16-bit floats (returned as float32).

    On CPU, channels-last float32 and bfloat16 sums go to the native kernel of ``_native`` (rows
    read in order, column totals kept in L1), or without it, float32 sums run as a batched
    matrix-vector product with a ones vector (one batch >= 40K elements: up to 2x faster than
    ``jnp.sum``); channels-first rows of <= 256 elements as ``x @ ones``; see the module
    docstring for the measurements. A custom JVP makes the gradient a broadcast (a native pass
    on CPU, a plain one elsewhere), never the transpose of these formulations; forward mode
    works too.
    """
    x = jnp.asarray(x)
    axes = _normalize_axes(x.ndim, axes)
    if not axes or not jnp.issubdtype(x.dtype, jnp.floating):
        return _plain_sum(x, axes)
    return _sum(x, axes, 1)


def spatial_mean(x: ArrayLike, axes: int | Sequence[int]) -> jax.Array:
    """``jnp.mean(x, axis=axes)``, in float32 for 16-bit floats: the sum divided by the count
    (in the native kernel, or apart from the reduction)."""
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


def _unfused(fn, y: jax.Array) -> jax.Array:
    """``fn(y)`` with y materialized: XLA would otherwise fuse the tree computing y into the
    reduce in fn, whose emitter then runs 2-3x slower than the tree alone ((32,7,7,2048): 0.5
    vs 0.2 ms). A conditional is a fusion boundary that XLA keeps (``optimization_barrier`` is
    not, on CPU); the predicate is data-dependent so it is not folded away, and both branches
    compute the same thing."""
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


def _ynn_max(x3: jax.Array) -> jax.Array:
    """Max over axis 1 of (P, R, Q) by YNNPACK (drops NaN). For large channels-last batches the
    rows are widened to ``k Q`` elements first (then a small second max over the k groups):
    YNNPACK's strided kernel runs faster on wide rows ((64,56,56,256) bfloat16: 7.6 -> 4.0 ms),
    though not on small ones ((128,32,32,64): 0.14 -> 0.27 ms), nor for bfloat16 sums."""
    P, R, Q = x3.shape
    k = _dot_plan(P, R, Q)[0] if Q > 1 and R * Q >= 2**18 else 1
    if k == 1:
        return jnp.max(x3, axis=1)
    return jnp.max(jnp.max(x3.reshape(P, R // k, k * Q), axis=1).reshape(P, k, Q), axis=1)


def _nan_exact(x: jax.Array, m: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    return jnp.where(jnp.any(jnp.isnan(x), axis=axes), jnp.asarray(jnp.nan, m.dtype), m)


def _use_ynn_max(prq, x: jax.Array) -> bool:
    """YNNPACK's reduce-max (plus NaN check) instead of the trees: for contiguous rows (Q == 1)
    of real size, where the trees vectorize badly, and for 16-bit floats, which XLA's own loops
    handle 5-50x slower than float32 ((128,32,32,64) bfloat16: tree 13 ms, YNNPACK 0.5 ms)."""
    if prq is None or x.size < _MIN_ELEMENTS:
        return False
    return prq[2] == 1 or x.dtype.itemsize < 4


def _cpu_max(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    prq = _collapse(x.shape, axes) if x.size else None
    if prq is None:
        return _nan_exact(x, jnp.max(x, axis=axes), axes)
    P, R, Q = prq
    out_shape = _out_shape(x.shape, axes)
    if not _use_ynn_max(prq, x):
        return _tree_max(x.reshape(P, R, Q)).reshape(out_shape)
    # YNNPACK's reduce-max, plus a sum that is NaN wherever a NaN was dropped (or, rarely, where
    # +inf and -inf meet: then the exact test runs).
    x3 = x.reshape(P, R, Q)
    m = _ynn_max(x3).reshape(out_shape)
    check = _cpu_sum(x, axes) if x.dtype == jnp.float32 else jnp.sum(x3, 1, dtype=jnp.float32)
    suspicious = jnp.any(jnp.isnan(check))
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
    elsewhere), reduced by one max. XLA's strided loops run 10x slower on 16-bit floats than on
    float32 (the 16-stream chunks of ``_first_hit``: (128,32,32,64) bfloat16 14 ms), while this
    fused map-and-reduce takes 1.0 ms, and 0.28 on (256,8,8,192)."""
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
    if x.size < _MIN_ELEMENTS:
        return _first_max_or_nan(x3, m)
    fast = _first_hit_code if x.dtype.itemsize < 4 and x3.shape[1] < 2**15 else _first_hit
    # A NaN column (rare) takes the exact full-size pass; the others the fast one.
    return lax.cond(jnp.any(jnp.isnan(m)), _first_max_or_nan, fast, x3, m)


@functools.lru_cache(maxsize=64)
def _global_window(R: int, divisor: int = 1) -> "_native.WindowMap":
    """One window over all R rows of (..., R, Q), its taps the rows in order, its sum divided by
    ``divisor``: with winners (the max's ``index``) its gather is ``_at_index``, without them
    the sum or mean; its scatter is their backward pass (a broadcast of g / divisor, or g
    written at the winner)."""

    def gather(t, win):
        if win is not None:
            hit = lax.broadcasted_iota(jnp.int32, t.shape, t.ndim - 2) == win
            t = jnp.where(hit, t, jnp.zeros((), t.dtype))
        return _divide(jnp.sum(t, axis=-2, keepdims=True), divisor)

    def scatter(g, win):
        shape = (*g.shape[:-2], R, g.shape[-1])
        g = _divide(g, divisor)
        if win is None:
            return jnp.broadcast_to(g, shape)
        hit = lax.broadcasted_iota(jnp.int32, shape, g.ndim - 2) == win
        return jnp.where(hit, g, jnp.zeros((), g.dtype))

    geometry = np.concatenate([[1, R, 1, R], np.arange(R)]).astype(np.int64)
    scale = None if divisor == 1 else np.full(1, 1.0 / divisor, np.float32)
    return _native.WindowMap(geometry, R, 1, scale, gather, scatter)


def _native_window_ok(t: jax.Array, axes: tuple[int, ...]) -> bool:
    """Whether the derivatives of t's reductions use the native window passes: float32 on CPU,
    channels last (>= 16 channels) or contiguous rows (their backward passes write dx natively,
    on huge pages where it is large)."""
    prq = _fast_path(t, axes)
    return (
        prq is not None
        and (prq[2] == 1 or prq[2] >= 16)
        and t.dtype == jnp.float32
        and _native.linear_available()
    )


def _at_index(t: jax.Array, index: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``t`` at the flat pooled position ``index``: a one-hot sum over the pooled axes, linear in
    t, whose transpose (the backward pass) writes ``where(position == index, g, 0)``: one write
    of dx, reading neither x nor t. Float32 on CPU uses the native window passes
    (``_native.window_map`` with one window over the pooled positions): its backward pass
    writes dx in one native pass (on huge pages where the output is large)."""
    if _native_window_ok(t, axes):
        P, R, Q = _collapse(t.shape, axes)
        win = index.reshape(P, 1, Q).astype(jnp.int32)
        return _native.window_map(t.reshape(P, R, Q), win, _global_window(R)).reshape(index.shape)
    t3 = _view(t, axes)
    one_hot = lax.broadcasted_iota(jnp.int32, t3.shape, 1) == jnp.expand_dims(
        index.reshape(t3.shape[:1] + t3.shape[2:]), 1
    )
    picked = jnp.sum(jnp.where(one_hot, t3, jnp.zeros((), t3.dtype)), axis=1)
    return picked.reshape(index.shape)


def _native_ok(x: jax.Array) -> bool:
    """Whether x's CPU reduction goes to the native kernel (decided at trace time)."""
    return x.size > 0 and _native.supports(x.dtype) and _native.available()


def _view3(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``_view`` with a trailing unit axis for contiguous rows: (P, R, Q)."""
    v = _view(x, axes)
    return v if v.ndim == 3 else v[..., None]


def _native_extreme(x: jax.Array, axes: tuple[int, ...], largest: bool, index: bool):
    out_shape = _out_shape(x.shape, axes)
    got = _native.extreme(_view3(x, axes), largest=largest, index=index)
    if index:
        return got[0].reshape(out_shape), got[1].reshape(out_shape)
    return got.reshape(out_shape)


def _cpu_extreme(x: jax.Array, axes: tuple[int, ...], largest: bool) -> jax.Array:
    if _native_ok(x):
        return _native_extreme(x, axes, largest, index=False)
    return _cpu_max(x, axes) if largest else -_cpu_max(-x, axes)


def _plain_extreme(x: jax.Array, axes: tuple[int, ...], largest: bool) -> jax.Array:
    return jnp.max(x, axis=axes) if largest else jnp.min(x, axis=axes)


def _platform_extreme(x: jax.Array, axes: tuple[int, ...], largest: bool) -> jax.Array:
    return lax.platform_dependent(
        x,
        cpu=functools.partial(_cpu_extreme, axes=axes, largest=largest),
        default=functools.partial(_plain_extreme, axes=axes, largest=largest),
    )


def _cpu_extreme_index(x: jax.Array, axes: tuple[int, ...], largest: bool):
    if _native_ok(x):  # one pass for both
        return _native_extreme(x, axes, largest, index=True)
    sign = 1 if largest else -1
    m = sign * _cpu_max(sign * x, axes)
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

    On CPU, ``jnp.max`` (YNNPACK) drops NaN and is slow for channels-last layouts: float32
    channels last runs as elementwise max trees instead (NaN-exact; (64,56,56,256) 8-11 ms vs
    11-14), other cases as YNNPACK's max plus a NaN check; see the module docstring. The
    gradient sends the whole cotangent to the first maximum (row-major over ``axes``), or to the
    first NaN, as PyTorch's ``adaptive_max_pool`` and gapjax's ``max_pool`` do; it is a custom
    JVP, so forward mode and higher orders work.
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
