"""Tests of the native CPU kernels (gapjax.pooling._native) and of their fallback.

The extreme kernels are checked bit for bit against a NumPy reference of PyTorch's rule (value
and position of the first maximum, or of the first NaN), over every dtype, over layouts that reach
each code path (contiguous rows with and without the 16 interleaved lanes, column blocks with
and without a vector remainder, several column blocks, the thread pool), and with ties, signed
zeros, infinities and NaN. The sum kernel is checked against float64 NumPy sums (within any
float32 summation order's rounding) over layouts that reach each of its paths. The public
functions must give the same values and gradients with the kernels and with the pure-XLA
formulations (``_native.disabled()``).
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gapjax
from gapjax.pooling import _native

pytestmark = pytest.mark.skipif(
    not _native.available(), reason="native kernels disabled (GAPJAX_NATIVE=0) or unavailable"
)

DTYPES = [np.float32, np.float64, jnp.bfloat16, np.float16]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}

# (P, R, Q): Q == 1 rows shorter than 32 (no lanes), with lanes and a remainder; Q < 16 (scalar
# columns); Q = 16 k up to 256 (whole rows in registers, with AVX-512: 12 vectors with
# positions, 16 without; fewer without AVX-512) and 16 k + r (running bests in L1: vector body
# and tail); Q > 2048 (two column blocks); the last two exceed 65536 elements (the thread pool).
SHAPES = [
    (3, 1, 1),
    (5, 31, 1),
    (4, 32, 1),
    (7, 101, 1),
    (4, 9, 3),
    (3, 40, 16),
    (5, 21, 192),
    (3, 20, 256),
    (2, 33, 37),
    (2, 7, 2100),
    (9, 300, 40),
    (70, 1100, 1),
]


def _specials(x: np.ndarray, rng) -> np.ndarray:
    """Ties, signed zeros, infinities and NaN (one or two per row, first or later)."""
    P, R, _ = x.shape
    x = np.round(x * 2) / 2  # ties everywhere
    zeros = rng.random(x.shape) < 0.1
    x[zeros] = np.where(rng.random(zeros.sum()) < 0.5, 0.0, -0.0)
    x[rng.random(x.shape) < 0.02] = np.inf
    x[rng.random(x.shape) < 0.02] = -np.inf
    if P >= 3:
        x[1] = -np.inf  # a whole batch of -inf
        x[2, R // 2] = np.nan  # one NaN per column
        x[2, R - 1] = -np.nan  # and a later one, of the other sign
    if P >= 4 and R >= 2:
        x[3, :] = -0.0
        x[3, R - 1] = 0.0  # +0 after -0: a tie, the first wins
    return x


def _reference(x: np.ndarray, largest: bool) -> np.ndarray:
    """Position along axis 1 of the first extreme, or of the first NaN."""
    key = x.astype(np.float64) * (1 if largest else -1)
    nan = np.isnan(key)
    return np.where(nan.any(1), nan.argmax(1), np.argmax(np.where(nan, -np.inf, key), 1))


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(UINT[a.dtype.itemsize])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_extreme_against_numpy(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = _specials(rng.standard_normal(shape) * 3, rng)
    with jax.enable_x64(dtype == np.float64):
        xj = jnp.asarray(x, dtype)
        xn = np.asarray(xj)  # rounded to dtype
        for largest in (True, False):
            want = _reference(xn, largest)
            value, index = jax.jit(
                lambda v, largest=largest: _native.extreme(v, largest=largest, index=True)
            )(xj)
            only = _native.extreme(xj, largest=largest, index=False)
            assert value.dtype == xj.dtype and index.dtype == jnp.int32
            np.testing.assert_array_equal(index, want)
            at = np.take_along_axis(xn, want[:, None], 1)[:, 0]
            np.testing.assert_array_equal(_bits(value), _bits(at))  # the element itself
            np.testing.assert_array_equal(_bits(only), _bits(at))


def test_vmap_and_leading_batch_axes():
    x = np.random.default_rng(1).standard_normal((3, 2, 5, 40, 20)).astype(np.float32)
    v, i = jax.vmap(lambda a: _native.extreme(a, largest=True, index=True))(x)
    assert v.shape == i.shape == (3, 2, 5, 20)
    np.testing.assert_array_equal(v, x.max(axis=3))
    np.testing.assert_array_equal(i, x.argmax(axis=3))


# (P, R, Q) for the sum kernel: contiguous rows (Q == 1) shorter than one vector, with the 4 x 16
# lanes and a remainder, on the thread pool, and split across threads (P = 1); columns with a
# scalar tail (Q < 16, 37), whole rows in registers (Q = 16 k <= 256, fewer without AVX-512),
# row counts that leave a partial group of 16, two and three column pieces of 2048, the thread
# pool, and rows split across threads with a partial per thread.
SUM_SHAPES = [
    (3, 1, 1),
    (5, 13, 1),
    (7, 101, 1),
    (70, 1100, 1),
    (1, 70001, 1),
    (4, 9, 3),
    (3, 40, 16),
    (4, 50, 192),
    (2, 33, 37),
    (2, 17, 2100),
    (2, 5, 4200),
    (9, 300, 40),
    (1, 3001, 48),
]


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", SUM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sum_against_numpy(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    xj = jnp.asarray(rng.standard_normal(shape) * 3 + 1, dtype)
    x64 = np.asarray(xj, np.float64)  # rounded to dtype
    for divisor in (1.0, 7.0):
        got = jax.jit(lambda v, d=divisor: _native.reduce_sum(v, divisor=d))(xj)
        assert got.dtype == jnp.float32 and got.shape == (shape[0], shape[2])
        want = x64.sum(axis=1) / divisor
        # Any float32 summation order is within this; the kernel's groups of 16 are well inside.
        tol = 2e-6 * np.abs(x64).sum(axis=1) / divisor
        assert np.all(np.abs(np.asarray(got, np.float64) - want) <= tol)


def test_sum_of_special_values_and_of_nothing():
    x = np.ones((3, 50, 20), np.float32)
    x[0, 7, 3] = np.nan
    x[1, 0, 4], x[1, 49, 4] = np.inf, -np.inf  # inf - inf
    x[2, 10, 5] = np.inf
    got = np.asarray(_native.reduce_sum(jnp.asarray(x)))
    with np.errstate(invalid="ignore"):
        want = x.astype(np.float64).sum(axis=1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)])
    empty = jnp.zeros((3, 0, 5), jnp.float32)
    np.testing.assert_array_equal(_native.reduce_sum(empty), np.zeros((3, 5)))
    assert np.isnan(np.asarray(_native.reduce_sum(empty, divisor=0.0))).all()  # 0 / 0


def test_sum_vmaps_over_leading_batch_axes():
    x = np.random.default_rng(3).standard_normal((3, 2, 5, 40, 20)).astype(np.float32)
    got = jax.vmap(lambda a: _native.reduce_sum(a, divisor=40.0))(x)
    assert got.shape == (3, 2, 5, 20)
    np.testing.assert_allclose(got, x.mean(axis=3), rtol=1e-5, atol=1e-6)


CASES = [  # (function, shape, kwargs)
    (gapjax.global_avg_pool, (4, 9, 11, 70), {}),
    (gapjax.global_sum_pool, (2, 30, 11, 70), {"axis": (1, 2)}),
    (gapjax.global_max_pool, (4, 9, 11, 70), {}),
    (gapjax.global_min_pool, (4, 9, 11, 70), {}),
    (gapjax.global_max_pool, (4, 70, 9, 11), {"data_format": "channels_first"}),
    (gapjax.global_min_pool, (3, 33, 20), {"axis": (0, 2)}),  # axes that do not collapse
    (gapjax.mixed_pool, (4, 9, 11, 70), {"alpha": 0.3}),
    (gapjax.catavgmax_pool, (2, 130, 24), {}),
]


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("fn,shape,kwargs", CASES, ids=lambda c: getattr(c, "__name__", None))
def test_public_functions_agree_with_the_xla_formulations(fn, shape, kwargs, dtype):
    rng = np.random.default_rng(2)
    x = jnp.asarray(np.round(rng.standard_normal(shape) * 2), dtype)  # many ties
    if "axis" in kwargs:
        mask = None
    elif kwargs.get("data_format") == "channels_first":
        mask = rng.random((shape[0], *shape[2:])) < 0.8
    else:
        mask = rng.random(shape[:-1]) < 0.8

    def run():
        def loss(x):
            out = fn(x, **kwargs)
            if mask is not None:
                out = out + fn(x, mask=mask, **kwargs)
            return jnp.sum(jnp.sin(out.astype(jnp.float32)))

        return jax.jit(lambda x: (fn(x, **kwargs), jax.grad(loss)(x)))(x)

    native = run()
    with _native.disabled():
        xla = run()
    exact = fn in (gapjax.global_max_pool, gapjax.global_min_pool)
    for a, b in zip(native, xla, strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if exact:
            np.testing.assert_array_equal(a, b)
        else:  # the means round differently as XLA fuses them differently; max picks agree
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_disabled_traces_without_custom_calls():
    def f(x):
        return gapjax.global_max_pool(x), gapjax.global_avg_pool(x)

    x = jnp.ones((2, 8, 8, 32))
    text = jax.jit(f).lower(x).as_text()
    assert "gapjax_extreme" in text and "gapjax_sum" in text
    with _native.disabled():
        assert "gapjax_" not in jax.jit(f).lower(x).as_text()


def test_a_failed_build_warns_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("GAPJAX_CACHE_DIR", str(tmp_path / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _native._load() is False
    assert any("native CPU kernels unavailable" in str(w.message) for w in caught)


def test_the_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("GAPJAX_CACHE_DIR", str(tmp_path))
    lib = _native._build(tmp_path)
    stamp = lib.stat().st_mtime_ns
    assert _native._build(tmp_path) == lib and lib.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [lib.name]  # no temporary files left


# Windowed max/min: the native select (float32, >= 16 contiguous values behind the pooled axes)
# must give the XLA engine's values, winners, indices and forward-mode tangents exactly, and its
# gradients up to the order of summation.
WINDOW_CASES = [  # (function, shape (channels last unless said), kwargs)
    (gapjax.max_pool, (2, 9, 11, 37), {"kernel_size": 3, "stride": 2}),
    (gapjax.max_pool, (2, 9, 11, 16), {"kernel_size": 3, "stride": 2, "convention": "caffe"}),
    (gapjax.max_pool, (2, 8, 8, 20), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
    (gapjax.min_pool, (2, 10, 9, 33), {"kernel_size": (3, 2), "padding": 1, "dilation": 2}),
    (gapjax.max_pool, (2, 12, 40), {"kernel_size": 4, "stride": 3, "padding": 2}),  # 1-D
    (gapjax.max_pool, (1, 5, 6, 7, 17), {"kernel_size": 2, "stride": 1, "padding": 1}),  # 3-D
    (
        gapjax.max_pool,
        (2, 14, 13, 24),
        {"kernel_size": 7, "stride": 2, "padding": 3},
    ),  # 49 taps: lines
    (gapjax.max_pool, (2, 9, 24, 10), {"kernel_size": 3, "data_format": "channels_first"}),
    (gapjax.adaptive_max_pool, (2, 10, 7, 18), {"output_size": (4, 5)}),
]


def _window_inputs(shape, seed):
    x = np.round(np.random.default_rng(seed).standard_normal(shape) * 2).astype(np.float32)
    flat = x.reshape(-1)
    flat[::97] = np.nan
    flat[5::89] = -np.inf
    flat[7::83] = np.inf
    x[0, 1] = -np.inf  # windows of -inf only (Caffe clamps them to -FLT_MAX)
    return x


@pytest.mark.parametrize("fn,shape,kwargs", WINDOW_CASES)
def test_window_select_agrees_with_the_xla_engine(fn, shape, kwargs):
    x = _window_inputs(shape, seed=len(shape) + shape[-1])
    with_indices = fn is not gapjax.min_pool and "convention" not in kwargs
    out_shape = jax.eval_shape(lambda v: fn(v, **kwargs), x).shape
    weights = np.random.default_rng(3).standard_normal(out_shape).astype(np.float32)
    clean = np.nan_to_num(x, posinf=9.0, neginf=-9.0)

    def run(x, clean):
        def loss(v):
            return jnp.sum(jnp.sin(fn(v, **kwargs)) * weights)

        out = {"value": fn(x, **kwargs), "grad": jax.grad(loss)(clean)}
        if with_indices:
            out["index"] = fn(x, return_indices=True, **kwargs)[1]
        out["jvp"] = jax.jvp(lambda v: fn(v, **kwargs), (clean,), (jnp.cos(clean),))[1]
        return out

    native = jax.jit(run)(x, clean)
    hlo = jax.jit(jax.grad(lambda v: jnp.sum(fn(v, **kwargs)))).lower(clean).as_text()
    # Channels first leaves one contiguous value behind the pooled axes: the XLA engine runs.
    channels_first = kwargs.get("data_format") == "channels_first"
    assert ("gapjax_window_select" in hlo) != channels_first
    with _native.disabled():
        xla = jax.jit(run)(x, clean)
    for key in native:
        if key == "grad":  # a cell that wins several windows sums their cotangents in any order
            np.testing.assert_allclose(native[key], xla[key], rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(native[key], xla[key], err_msg=key)


# Window sums and their transposes (``_native.window_map``): the kernels against a NumPy
# reference built from the window definitions alone.


def _axis_table(length, out, base, size, dilation):
    """(out, taps) input positions read by each tap of each output, -1 outside x or the window."""
    taps = int(max(size))
    pos = np.asarray(base)[:, None] + dilation * np.arange(taps)[None, :]
    ok = (np.arange(taps)[None, :] < np.asarray(size)[:, None]) & (pos >= 0) & (pos < length)
    return np.where(ok, pos, -1)


def _geometry(tables, lengths):
    k = len(tables)
    head = [k, *lengths, *[t.shape[0] for t in tables], *[t.shape[1] for t in tables]]
    return np.concatenate([np.asarray(head, np.int64)] + [t.reshape(-1) for t in tables])


def _reference_pairs(tables, lengths):
    """Every (flat output, flat tap, flat input position) of the windows, row-major."""
    grids = [range(t.shape[0]) for t in tables]
    tap_grids = [range(t.shape[1]) for t in tables]
    pairs = []
    for o, oi in enumerate(np.ndindex(*[len(g) for g in grids])):
        for tap, ti in enumerate(np.ndindex(*[len(g) for g in tap_grids])):
            src = [t[a, j] for t, a, j in zip(tables, oi, ti, strict=True)]
            if min(src) >= 0:
                pairs.append((o, tap, int(np.ravel_multi_index(src, lengths))))
    return pairs


def _unusable(*_):
    raise AssertionError("the XLA formulation is for other platforms")


# (lengths, per axis (out, base, size, dilation)), Q
LINEAR_CASES = [
    ((11,), [(5, np.arange(5) * 2 - 1, [3] * 5, 1)], 37),  # padded, a vector tail
    ((9, 10), [(4, np.arange(4) * 2, [3] * 4, 1), (5, np.arange(5) * 2 - 1, [3] * 5, 1)], 16),
    ((8, 8), [(8, np.arange(8) - 1, [3] * 8, 1), (8, np.arange(8) - 1, [3] * 8, 1)], 200),
    ((10, 7), [(4, np.arange(4) * 3 - 2, [2] * 4, 2), (3, [0, 2, 4], [3, 3, 3], 1)], 5),
    ((7, 5), [(3, [0, 2, 4], [3, 3, 3], 1), (2, [0, 2], [3, 3], 1)], 20),  # adaptive, overlapping
    (
        (4, 5, 6),
        [(3, [-1, 1, 3], [2] * 3, 1), (5, np.arange(5) - 1, [3] * 5, 1), (2, [0, 3], [3, 3], 1)],
        17,
    ),  # 3-D
    ((40, 40, 40), [(40, np.arange(40) - 1, [3] * 40, 1)] * 3, 16),  # > 2^20 terms: no table
    # >= 33 taps: gathered by lines. Padded at both ends; adaptive and overlapping; 3-D;
    # lines of 30 x 200 values (two tiles of running sums).
    ((90,), [(3, [-5, 25, 55], [40] * 3, 1)], 37),
    ((13, 11), [(2, [0, 6], [7, 7], 1), (2, [0, 5], [6, 6], 1)], 16),
    (
        (6, 7, 8),
        [(2, [-1, 2], [4, 4], 1), (3, [-1, 2, 4], [3] * 3, 1), (3, [0, 3, 5], [3] * 3, 1)],
        17,
    ),
    ((6, 240), [(1, [0], [6], 1), (30, np.arange(30) * 8, [8] * 30, 1)], 200),
    # One window over contiguous rows (global pooling, channels first): its own loops.
    ((70,), [(1, [0], [70], 1)], 1),
]


@pytest.mark.parametrize("lengths,axes,Q", LINEAR_CASES, ids=lambda c: str(c)[:12])
def test_window_map_against_numpy(lengths, axes, Q):
    rng = np.random.default_rng(len(lengths) + Q)
    tables = [_axis_table(n, *a) for n, a in zip(lengths, axes, strict=True)]
    S, O = math.prod(lengths), math.prod(t.shape[0] for t in tables)
    taps = math.prod(t.shape[1] for t in tables)
    pairs = _reference_pairs(tables, lengths)
    P = 2 if S * Q < 1e6 else 1
    x = rng.standard_normal((P, S, Q)).astype(np.float32)
    g = rng.standard_normal((P, O, Q)).astype(np.float32)
    win = rng.integers(-1, taps, (P, O, Q))
    scale = rng.random(O).astype(np.float32) + 0.5
    geometry = _geometry(tables, lengths)

    def wmap(scale):
        return _native.WindowMap(geometry, S, O, scale, _unusable, _unusable)

    # Reference: the window sums in row-major tap order from 0, in float32 (the kernel's order).
    sums = np.zeros((P, O, Q), np.float32)
    picks = np.zeros((P, O, Q), np.float32)
    back = np.zeros((P, S, Q), np.float64)
    back_win = np.zeros((P, S, Q), np.float64)
    for o, tap, s in pairs:
        sums[:, o] += x[:, s]
        picks[:, o] += np.where(win[:, o] == tap, x[:, s], np.float32(0))
        back[:, s] += g[:, o].astype(np.float64) * scale[o]
        back_win[:, s] += np.where(win[:, o] == tap, g[:, o], 0)

    run = jax.jit(
        lambda v, w, m, scatter: _native.window_map(v, w, m, scatter=scatter), static_argnums=(2, 3)
    )
    np.testing.assert_array_equal(run(x, None, wmap(None), False), sums)
    np.testing.assert_array_equal(run(x, None, wmap(scale), False), sums * scale[:, None])
    np.testing.assert_allclose(run(g, None, wmap(scale), True), back, rtol=1e-5, atol=1e-5)
    for dtype in (np.int8, np.int32):
        w = jnp.asarray(win, dtype)
        np.testing.assert_array_equal(run(x, w, wmap(None), False), picks)
        np.testing.assert_allclose(run(g, w, wmap(None), True), back_win, rtol=1e-5, atol=1e-5)


def test_window_map_transposes_vmaps_and_differentiates():
    lengths, axes = (
        (9, 10),
        [(4, np.arange(4) * 2, [3] * 4, 1), (5, np.arange(5) * 2 - 1, [3] * 5, 1)],
    )
    tables = [_axis_table(n, *a) for n, a in zip(lengths, axes, strict=True)]
    m = _native.WindowMap(_geometry(tables, lengths), 90, 20, None, _unusable, _unusable)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((3, 90, 32)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((3, 20, 32)), jnp.float32)
    win = jnp.asarray(rng.integers(0, 9, (3, 20, 32)), jnp.int8)
    for w in (None, win):
        gather = lambda v, w=w: _native.window_map(v, w, m)  # noqa: E731
        scatter = lambda v, w=w: _native.window_map(v, w, m, scatter=True)  # noqa: E731
        # <gather(x), g> == <x, scatter(g)>: each is the other's transpose.
        np.testing.assert_allclose(jnp.vdot(gather(x), g), jnp.vdot(x, scatter(g)), rtol=1e-5)
        # Reverse mode is the scatter, forward mode the gather itself (linear maps).
        np.testing.assert_allclose(jax.vjp(gather, x)[1](g)[0], scatter(g), rtol=1e-6)
        np.testing.assert_allclose(jax.vjp(scatter, g)[1](x)[0], gather(x), rtol=1e-6)
        np.testing.assert_array_equal(jax.jvp(gather, (x,), (2 * x,))[1], gather(2 * x))
        # vmap: over both operands, and over the cotangent alone (the winners broadcast).
        np.testing.assert_array_equal(jax.vmap(gather)(x[:, None])[:, 0], gather(x))
        if w is not None:
            both = jax.vmap(lambda v, ww: _native.window_map(v[None], ww[None], m)[0])(x, w)
            np.testing.assert_array_equal(both, gather(x))
        pull = jax.vjp(gather, x)[1]
        many = jax.vmap(lambda c, pull=pull: pull(c)[0])(jnp.stack([g, 2 * g]))
        np.testing.assert_allclose(many[1], 2 * scatter(g), rtol=1e-6)


# Average pooling (and the other window sums): native passes vs the XLA engine.
SUM_CASES = [
    (gapjax.avg_pool, (2, 9, 11, 37), {"kernel_size": 3, "stride": 1, "padding": 1}),
    (
        gapjax.avg_pool,
        (2, 9, 11, 16),
        {
            "kernel_size": 3,
            "stride": 2,
            "ceil_mode": True,
            "count_include_pad": False,
            "padding": 1,
        },
    ),
    (gapjax.avg_pool, (2, 8, 8, 20), {"kernel_size": 2, "divisor_override": 3}),
    (gapjax.avg_pool, (2, 9, 11, 20), {"kernel_size": 3, "padding": "same"}),  # Keras
    (gapjax.avg_pool, (1, 5, 6, 7, 17), {"kernel_size": 2, "stride": 1, "padding": 1}),  # 3-D
    (
        gapjax.avg_pool,
        (2, 14, 13, 24),
        {"kernel_size": 7, "stride": 2, "padding": 3},
    ),  # 49 taps: lines
    (gapjax.lp_pool, (2, 9, 11, 24), {"p": 2.0, "kernel_size": 3, "stride": 2}),
    (gapjax.adaptive_avg_pool, (2, 10, 7, 18), {"output_size": (4, 5)}),
    (gapjax.adaptive_avg_pool, (2, 24, 24, 16), {"output_size": 3}),  # 8 x 8: lines
]


@pytest.mark.parametrize("fn,shape,kwargs", SUM_CASES)
def test_window_sums_agree_with_the_xla_engine(fn, shape, kwargs):
    rng = np.random.default_rng(len(shape) + shape[-1])
    x = jnp.asarray(rng.standard_normal(shape) + 2.0, jnp.float32)
    out_shape = jax.eval_shape(lambda v: fn(v, **kwargs), x).shape
    weights = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)

    def run(x):
        def loss(v):
            return jnp.sum(jnp.sin(fn(v, **kwargs)) * weights)

        return {
            "value": fn(x, **kwargs),
            "grad": jax.grad(loss)(x),
            "hvp": jax.jvp(jax.grad(loss), (x,), (jnp.cos(x),))[1],
            "jvp": jax.jvp(lambda v: fn(v, **kwargs), (x,), (jnp.cos(x),))[1],
            "eager_grad": None,
        }

    native = jax.jit(run)(x)
    native["eager_grad"] = jax.grad(lambda v: jnp.sum(fn(v, **kwargs) * weights))(x)
    hlo = jax.jit(jax.grad(lambda v: jnp.sum(fn(v, **kwargs) * weights))).lower(x).as_text()
    tangent = jax.jit(lambda v: jax.jvp(lambda u: fn(u, **kwargs), (v,), (v,))[1])
    assert "gapjax_window_gather" in tangent.lower(x).as_text()
    assert "gapjax_window_scatter" in hlo
    with _native.disabled():
        xla = jax.jit(run)(x)
        xla["eager_grad"] = jax.grad(lambda v: jnp.sum(fn(v, **kwargs) * weights))(x)
    for key in native:  # sums in another order: equal up to rounding
        np.testing.assert_allclose(native[key], xla[key], rtol=2e-5, atol=2e-6, err_msg=key)


def test_max_pool_second_order_and_vmap_through_the_native_passes():
    fn = lambda v: gapjax.max_pool(v, 3, stride=2, padding=1)  # noqa: E731
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((3, 9, 10, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(fn(x).shape), jnp.float32)

    def run(x):
        loss = lambda v: jnp.sum(jnp.sin(fn(v)) * w)  # noqa: E731
        per_example = jax.vmap(jax.grad(lambda v, ww: jnp.sum(jnp.sin(fn(v[None])) * ww)))
        return {
            "hvp": jax.jvp(jax.grad(loss), (x,), (jnp.cos(x),))[1],
            "vmap_grad": per_example(x, w),
            "grad": jax.grad(loss)(x),
        }

    native = jax.jit(run)(x)
    assert "gapjax_window_scatter_win" in jax.jit(run).lower(x).as_text()
    with _native.disabled():
        xla = jax.jit(run)(x)
    for key in native:
        np.testing.assert_allclose(native[key], xla[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("pool", [gapjax.global_avg_pool, gapjax.global_max_pool])
def test_global_pool_derivatives_use_the_native_window_passes(pool, data_format):
    rng = np.random.default_rng(5)
    x = jnp.asarray(np.round(rng.standard_normal((3, 10, 12, 40)) * 2), jnp.float32)  # ties
    if data_format == "channels_first":
        x = jnp.transpose(x, (0, 3, 1, 2))
    v = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def fn(x):
        return pool(x, data_format=data_format)

    def loss(x):
        return jnp.sum(jnp.sin(fn(x)) * jnp.arange(1.0, 41.0))

    def run():
        grad = jax.jit(jax.grad(loss))
        return (
            grad(x),
            jax.jvp(fn, (x,), (v,))[1],
            jax.jvp(grad, (x,), (v,))[1],  # Hessian-vector product
            jax.vmap(jax.grad(lambda xi: loss(xi[None])))(x),  # per-example gradients
        )

    assert "gapjax_window_scatter" in jax.jit(jax.grad(loss)).lower(x).as_text()
    native = run()
    with _native.disabled():
        assert "gapjax_window" not in jax.jit(jax.grad(loss)).lower(x).as_text()
        xla = run()
    for a, b in zip(native, xla, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if pool is gapjax.global_max_pool:  # the whole cotangent at the first maximum
        g, xs = np.asarray(native[0]), np.asarray(x)
        if data_format == "channels_first":
            g, xs = g.transpose(0, 2, 3, 1), xs.transpose(0, 2, 3, 1)
        g = g.reshape(3, 120, 40)
        first = xs.reshape(3, 120, 40).argmax(axis=1)
        assert (np.count_nonzero(g, axis=1) <= 1).all()
        hit = np.take_along_axis(g, first[:, None], 1)[:, 0]
        np.testing.assert_array_equal(hit != 0, np.abs(g).sum(axis=1) != 0)


def test_large_outputs_are_written_whole():
    # Outputs of >= 8 MB are advised as huge pages before the kernels write them (Linux): the
    # whole buffer, its unaligned ends included, must still be written.
    x = jnp.asarray(np.random.default_rng(6).standard_normal((2, 130, 128, 64)), jnp.float32)

    def run():
        def f(x):
            return gapjax.avg_pool(x, 3, stride=1, padding=1)

        y, vjp = jax.vjp(f, x)
        return y, vjp(jnp.ones_like(y))[0], jax.grad(lambda x: gapjax.global_max_pool(x).sum())(x)

    native = run()
    assert native[0].nbytes >= 8 << 20
    with _native.disabled():
        xla = run()
    for a, b in zip(native, xla, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
