"""Windowed and adaptive pooling against golden tables, a NumPy reference, recorded PyTorch values.

The NumPy reference below is written from REFERENCE.md section 1 (output length, windows,
divisors) and PyTorch's scan rule for max (first maximum in row-major window order, the last
NaN if any), independently of gapjax's tap engine.
"""

import itertools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import gapjax
from gapjax.pooling import _windows

DATA = pathlib.Path(__file__).resolve().parent / "data" / "torch_windows.json"


# --------------------------------------------------------------------------------------------
# NumPy reference (channels first: (N, C, *spatial)).
# --------------------------------------------------------------------------------------------


def ref_length(L, k, s, p, d=1, ceil=False, convention="pytorch"):
    if convention == "pytorch":
        out = math.floor((L + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) / s) + 1
        if ceil and (out - 1) * s >= L + p:
            out -= 1
        return out
    out = (math.ceil if ceil else math.floor)((L + 2 * p - k) / s) + 1
    if p > 0 and (out - 1) * s >= L + p:
        out -= 1
    return out


def ref_windows(L, k, s, p, d, out):
    """Per output: (cells inside x, count inside [-p, L+p))."""
    wins = []
    for i in range(out):
        start = i * s - p
        cells = [start + j * d for j in range(k)]
        inside = [c for c in cells if 0 <= c < L]
        padded = min(start + k, L + p) - start
        wins.append((inside, max(padded, 0)))
    return wins


def ref_pool(
    x,
    op,
    k,
    s,
    p,
    d=1,
    ceil=False,
    convention="pytorch",
    count_include_pad=True,
    divisor=None,
    norm=2.0,
):
    """Returns (y, flat index of the winner for max/min, gradient of sum(y * w)) as a function."""
    spatial = x.shape[2:]
    n = len(spatial)
    k, s, p, d = ([v] * n if np.isscalar(v) else list(v) for v in (k, s, p, d))
    outs = [ref_length(L, *a, ceil, convention) for L, *a in zip(spatial, k, s, p, d, strict=True)]
    axes = [ref_windows(L, *a, o) for L, *a, o in zip(spatial, k, s, p, d, outs, strict=True)]
    y = np.zeros(x.shape[:2] + tuple(outs))
    idx = np.full(y.shape, -1, np.int64)
    for nc in itertools.product(*(range(v) for v in x.shape[:2])):
        for o in itertools.product(*(range(v) for v in outs)):
            cells = list(itertools.product(*(axes[a][o[a]][0] for a in range(n))))
            vals = [float(x[nc + c]) for c in cells]
            flat = [int(np.ravel_multi_index(c, spatial)) for c in cells]
            if op in ("max", "min"):
                best, where = (-np.inf if op == "max" else np.inf), (flat[0] if flat else -1)
                for v, f in zip(vals, flat, strict=True):
                    if (v > best if op == "max" else v < best) or np.isnan(v):
                        best, where = v, f
                y[nc + o], idx[nc + o] = best, where
            elif op == "avg":
                if divisor is not None:
                    den = divisor
                elif count_include_pad:
                    den = math.prod(axes[a][o[a]][1] for a in range(n))
                else:
                    den = len(vals)
                y[nc + o] = sum(vals) / den if den else 0.0
            elif op == "lp":
                den = math.prod(axes[a][o[a]][1] for a in range(n))
                y[nc + o] = (sum(v**norm for v in vals) * math.prod(k) / den) ** (1 / norm)
    return y, idx


def ref_max_grad(x_shape, idx, w):
    """Gradient of sum(max_pool(x) * w): w scattered (added) at the winners."""
    g = np.zeros((math.prod(x_shape[:2]), math.prod(x_shape[2:])))
    flat_idx = idx.reshape(len(g), -1)
    flat_w = w.reshape(len(g), -1)
    for r in range(len(g)):
        for i, wi in zip(flat_idx[r], flat_w[r], strict=True):
            if i >= 0:
                g[r, i] += wi
    return g.reshape(x_shape)


def ties(shape, seed=0):
    """Random values rounded to 0.5: many ties, so the winner rule is tested."""
    r = np.random.default_rng(seed)
    return (np.round(r.normal(size=shape) * 2) / 2).astype(np.float32)


def nhwc(a):
    return np.moveaxis(np.asarray(a), 1, -1)


def nchw(a):
    return np.moveaxis(np.asarray(a), -1, 1)


# --------------------------------------------------------------------------------------------
# Golden tables (REFERENCE.md section 1).
# --------------------------------------------------------------------------------------------

GOLDEN_LENGTHS = [  # H, k, s, p, PyTorch floor, PyTorch ceil, Caffe CEIL
    (32, 3, 2, 0, 15, 16, 16),
    (16, 3, 2, 0, 7, 8, 8),
    (112, 3, 2, 1, 56, 57, 57),
    (6, 1, 2, 0, 3, 3, 4),
    (5, 1, 3, 0, 2, 2, 3),
]


@pytest.mark.parametrize("H,k,s,p,floor,ceil,caffe", GOLDEN_LENGTHS)
def test_golden_output_lengths(H, k, s, p, floor, ceil, caffe):
    assert _windows.output_length(H, k, s, (p, p), 1, False, "pytorch") == floor
    assert _windows.output_length(H, k, s, (p, p), 1, True, "pytorch") == ceil
    assert _windows.output_length(H, k, s, (p, p), 1, True, "caffe") == caffe
    x = jnp.zeros((1, H, 1))
    assert gapjax.max_pool(x, k, stride=s, padding=p).shape == (1, floor, 1)
    assert gapjax.max_pool(x, k, stride=s, padding=p, ceil_mode=True).shape == (1, ceil, 1)
    assert gapjax.avg_pool(x, k, stride=s, padding=p, convention="caffe").shape == (1, caffe, 1)


def test_nin_pools_give_32_16_8_with_caffe_rounding():
    x = jnp.ones((2, 32, 32, 4))
    y = gapjax.max_pool(x, 3, stride=2, convention="caffe")
    z = gapjax.max_pool(y, 3, stride=2, convention="caffe")
    assert y.shape == (2, 16, 16, 4) and z.shape == (2, 8, 8, 4)
    assert gapjax.max_pool(x, 3, stride=2).shape == (2, 15, 15, 4)  # PyTorch's floor


def test_ceil_mode_overhang_divisor():
    """The window past the padding divides by the cells inside [-p, L+p), not by k (ONNX, CoreML,
    XLA got this wrong once); values recorded from torch 2.13.0 (F.avg_pool1d)."""
    x = jnp.arange(6.0).reshape(1, 6, 1)
    y = gapjax.avg_pool(x, 2, stride=2, padding=1, ceil_mode=True)
    np.testing.assert_allclose(y[0, :, 0], [0.0, 1.5, 3.5, 2.5])
    y = gapjax.avg_pool(x, 2, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    np.testing.assert_allclose(y[0, :, 0], [0.0, 1.5, 3.5, 5.0])
    y = gapjax.avg_pool(jnp.arange(5.0).reshape(1, 5, 1), 2, stride=2, ceil_mode=True)
    np.testing.assert_allclose(y[0, :, 0], [0.5, 2.5, 4.0])  # overhang without padding: 4 / 1


def test_caffe_empty_window():
    """L=6, k=1, s=2: Caffe makes a 4th window starting at 6, outside the input."""
    x = jnp.arange(1.0, 7.0).reshape(1, 6, 1)
    y = gapjax.avg_pool(x, 1, stride=2, convention="caffe")
    np.testing.assert_allclose(y[0, :, 0], [1.0, 3.0, 5.0, 0.0])
    m, i = gapjax.max_pool(x, 1, stride=2, convention="caffe", return_indices=True)
    np.testing.assert_array_equal(m[0, :, 0], [1.0, 3.0, 5.0, np.finfo(np.float32).min])
    np.testing.assert_array_equal(i[0, :, 0], [0, 2, 4, -1])
    g = jax.grad(lambda v: gapjax.max_pool(v, 1, stride=2, convention="caffe").sum())(x)
    np.testing.assert_array_equal(g[0, :, 0], [1, 0, 1, 0, 1, 0])


@pytest.mark.parametrize("largest", [True, False])
def test_caffe_clamps_to_flt_max_without_gradient(largest):
    # Caffe starts max pooling from -FLT_MAX (min: +FLT_MAX): a window of -inf gives -FLT_MAX
    # and no gradient; one whose max IS -FLT_MAX keeps its gradient; NaN stays NaN. 2-D, so the
    # clamp runs in the interior and border regions of the tap engine.
    big = np.finfo(np.float32).max
    inf = np.inf
    m = np.array(
        [
            [-inf, -inf, -big, -inf],
            [-inf, -inf, -inf, -inf],
            [1.0, np.nan, 4.0, 7.0],
            [2.0, 3.0, 7.0, 5.0],
            [6.0, 8.0, 9.0, -1.0],  # the ceil-mode overhang row of windows
        ],
        np.float32,
    )
    sign = 1.0 if largest else -1.0
    pool = gapjax.max_pool if largest else gapjax.min_pool
    x = jnp.asarray(sign * m)[None, :, :, None]
    y = pool(x, 2, stride=2, convention="caffe")
    want = np.array([[-big, -big], [np.nan, 7.0], [8.0, 9.0]], np.float32)
    np.testing.assert_array_equal(y[0, :, :, 0], sign * want)
    g = jax.grad(lambda v: jnp.nansum(pool(v, 2, stride=2, convention="caffe")))(x)
    want_g = np.zeros((5, 4), np.float32)
    want_g[0, 2] = 1  # the -FLT_MAX cell wins its window
    want_g[2, 3] = 1  # the first of the tied 7s
    want_g[4, 1] = want_g[4, 2] = 1
    np.testing.assert_array_equal(g[0, :, :, 0], want_g)


def test_same_padding_follows_keras():
    # L=6, k=3, s=2: out 3, total padding 1, all of it on the high side.
    x = jnp.arange(1.0, 7.0).reshape(1, 6, 1)
    y = gapjax.avg_pool(x, 3, stride=2, padding="same")
    np.testing.assert_allclose(y[0, :, 0], [2.0, 4.0, 5.5])  # last window: (5 + 6) / 2
    y = gapjax.avg_pool(x, 3, stride=2, padding="same", count_include_pad=True)
    np.testing.assert_allclose(y[0, :, 0], [2.0, 4.0, 11 / 3])
    # L=5, k=3, s=2: out 3, padding 1 + 1.
    m = gapjax.max_pool(-jnp.arange(1.0, 6.0).reshape(1, 5, 1), 3, stride=2, padding="same")
    np.testing.assert_allclose(m[0, :, 0], [-1.0, -2.0, -4.0])
    assert gapjax.max_pool(jnp.zeros((1, 7, 1)), 2, padding="valid").shape == (1, 3, 1)


# --------------------------------------------------------------------------------------------
# Against the NumPy reference.
# --------------------------------------------------------------------------------------------

SWEEP = [  # (spatial shape, k, s, p, d, ceil)
    ((9,), 3, 2, 1, 1, False),
    ((10,), 4, 3, 2, 1, True),
    ((11,), 3, 2, 1, 2, True),
    ((8, 7), 3, 2, 1, 1, True),
    ((8, 7), 3, 2, 0, 1, True),
    ((9, 9), 2, 1, 1, 1, False),
    ((9, 8), (3, 2), (2, 1), (1, 0), (2, 1), True),
    ((7, 6), 3, 1, 1, 1, False),
    ((5, 4, 6), 2, 2, 1, 1, True),
    ((4, 5, 4), (3, 2, 2), (1, 2, 2), (1, 0, 1), 1, False),
    ((12, 12), 6, 3, 0, 1, False),  # 36 cells: reduced axis by axis
]


@pytest.mark.parametrize("spatial,k,s,p,d,ceil", SWEEP)
@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_values_indices_and_gradients_match_the_reference(spatial, k, s, p, d, ceil, op):
    x = ties((2, 3, *spatial))
    fn = gapjax.max_pool if op == "max" else gapjax.min_pool
    kw = dict(stride=s, padding=p, dilation=d, ceil_mode=ceil)
    kernel = k if isinstance(k, tuple) else (k,) * len(spatial)
    y, i = fn(jnp.asarray(nhwc(x)), kernel, return_indices=True, **kw)
    ry, ri = ref_pool(x, op, k, s, p, d, ceil)
    np.testing.assert_array_equal(nchw(y), ry)
    np.testing.assert_array_equal(nchw(i), ri)
    assert i.dtype == jnp.int32
    w = ties(ry.shape, seed=1)
    g = jax.grad(lambda v: jnp.sum(fn(v, kernel, **kw) * jnp.asarray(nhwc(w))))(
        jnp.asarray(nhwc(x))
    )
    np.testing.assert_allclose(nchw(g), ref_max_grad(x.shape, ri, w))
    # channels_first gives the same.
    y2 = fn(jnp.asarray(x), kernel, data_format="channels_first", **kw)
    np.testing.assert_array_equal(y2, ry)


@pytest.mark.parametrize("spatial,k,s,p,d,ceil", [c for c in SWEEP if c[4] == 1])
@pytest.mark.parametrize("include", [True, False])
def test_avg_matches_the_reference(spatial, k, s, p, d, ceil, include):
    x = ties((2, 3, *spatial))
    kernel = k if isinstance(k, tuple) else (k,) * len(spatial)
    y = gapjax.avg_pool(
        jnp.asarray(nhwc(x)), kernel, stride=s, padding=p, ceil_mode=ceil, count_include_pad=include
    )
    ry, _ = ref_pool(x, "avg", k, s, p, 1, ceil, count_include_pad=include)
    np.testing.assert_allclose(nchw(y), ry, rtol=1e-6, atol=1e-6)


def test_avg_divisor_override_and_caffe_rule_match_the_reference():
    x = ties((1, 2, 7, 8))
    y = gapjax.avg_pool(
        jnp.asarray(nhwc(x)), 3, stride=2, padding=1, ceil_mode=True, divisor_override=4
    )
    ry, _ = ref_pool(x, "avg", 3, 2, 1, 1, True, divisor=4)
    np.testing.assert_allclose(nchw(y), ry, rtol=1e-6, atol=1e-6)
    y = gapjax.avg_pool(jnp.asarray(nhwc(x)), 3, stride=2, padding=1, convention="caffe")
    ry, _ = ref_pool(x, "avg", 3, 2, 1, 1, True, convention="caffe")
    np.testing.assert_allclose(nchw(y), ry, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "spatial,k,s,ceil", [((9,), 3, 2, True), ((7, 7), 3, 2, True), ((6, 5), 2, 2, False)]
)
def test_lp_matches_the_reference_including_pytorchs_overhang_scaling(spatial, k, s, ceil):
    x = np.abs(ties((2, 2, *spatial))) + 0.25
    y = gapjax.lp_pool(jnp.asarray(nhwc(x)), 2.0, (k,) * len(spatial), stride=s, ceil_mode=ceil)
    ry, _ = ref_pool(x, "lp", k, s, 0, 1, ceil, norm=2.0)
    np.testing.assert_allclose(nchw(y), ry, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Values recorded from PyTorch (no torch needed).
# --------------------------------------------------------------------------------------------

RECORDED = json.loads(DATA.read_text())


def _call(case, x):
    """The gapjax call equivalent to a recorded torch.nn.functional call, channels first."""
    op, kw = case["op"], dict(case["kwargs"])
    n = int(op[-2])
    cf = dict(data_format="channels_first")
    if op.startswith("adaptive"):
        size = kw["output_size"]
        size = tuple(size) if isinstance(size, list) else (size,) * n
        fn = gapjax.adaptive_max_pool if "max" in op else gapjax.adaptive_avg_pool
        extra = dict(return_indices=True) if "max" in op else {}
        return fn(x, size, **extra, **cf)
    k = kw.pop("kernel_size")
    k = tuple(k) if isinstance(k, list) else (k,) * n
    kw = {a: tuple(v) if isinstance(v, list) else v for a, v in kw.items()}
    if op.startswith("max"):
        return gapjax.max_pool(x, k, return_indices=True, **kw, **cf)
    if op.startswith("avg"):
        return gapjax.avg_pool(x, k, **kw, **cf)
    p = kw.pop("norm_type")
    return gapjax.lp_pool(jnp.abs(x) + 0.25, p, k, **kw, **cf)


def _input(case, seed):
    shape = case["shape"]
    v = np.sin(np.arange(np.prod(shape)) * 1.3 + seed) * 3
    return jnp.asarray((np.round(v * 2) / 2).astype(np.float32).reshape(shape))


@pytest.mark.parametrize("name", sorted(RECORDED["cases"]))
def test_matches_values_recorded_from_pytorch(name):
    case = RECORDED["cases"][name]
    seed = list(RECORDED["cases"]).index(name)
    x = _input(case, seed)
    out = _call(case, x)
    y, idx = out if isinstance(out, tuple) else (out, None)
    np.testing.assert_allclose(y, case["y"], rtol=1e-5, atol=1e-5)
    if case["indices"] is not None:
        np.testing.assert_array_equal(idx, case["indices"])
    w = jnp.asarray(np.asarray(case["y"]) * 0 + _input({"shape": list(y.shape)}, 100 + seed))

    def loss(v):
        o = _call(case, v)
        return jnp.sum((o[0] if isinstance(o, tuple) else o) * w)

    grad, expected = np.asarray(jax.grad(loss)(x)), np.asarray(case["grad"])
    if case["op"].startswith("lp"):  # |x|' at 0: PyTorch says 0, JAX 1; not pooling's business
        grad, expected = grad[x != 0], expected[x != 0]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Adaptive pooling.
# --------------------------------------------------------------------------------------------


def ref_adaptive(x, out, op):
    spatial = x.shape[2:]
    wins = [
        [(i * L // o, -(-(i + 1) * L // o)) for i in range(o)]
        for L, o in zip(spatial, out, strict=True)
    ]
    y = np.zeros(x.shape[:2] + tuple(out))
    for o in itertools.product(*(range(v) for v in out)):
        region = (slice(None), slice(None), *(slice(*wins[a][o[a]]) for a in range(len(out))))
        block = x[region].reshape(*x.shape[:2], -1)
        y[(slice(None), slice(None), *o)] = block.max(-1) if op == "max" else block.mean(-1)
    return y


@pytest.mark.parametrize(
    "spatial,out",
    [
        ((7,), (3,)),
        ((10, 7), (4, 3)),
        ((3, 5), (5, 8)),
        ((8, 8), (4, 2)),
        ((5, 4, 6), (2, 3, 4)),
        ((6, 9), (6, 1)),
    ],
)
def test_adaptive_pools_match_the_reference(spatial, out):
    x = ties((2, 3, *spatial))
    xl = jnp.asarray(nhwc(x))
    np.testing.assert_allclose(
        nchw(gapjax.adaptive_avg_pool(xl, out)), ref_adaptive(x, out, "avg"), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(
        nchw(gapjax.adaptive_max_pool(xl, out)), ref_adaptive(x, out, "max")
    )


def test_adaptive_none_keeps_an_axis_and_one_is_global():
    x = jnp.asarray(ties((2, 6, 5, 3)))
    assert gapjax.adaptive_avg_pool(x, (None, 2)).shape == (2, 6, 2, 3)
    np.testing.assert_allclose(
        gapjax.adaptive_avg_pool(x, 1)[:, 0, 0], gapjax.global_avg_pool(x), rtol=1e-6
    )
    np.testing.assert_array_equal(
        gapjax.adaptive_max_pool(x, 1)[:, 0, 0], gapjax.global_max_pool(x)
    )


# --------------------------------------------------------------------------------------------
# Gradients, unpooling, dtypes, transformations.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: gapjax.avg_pool(x, 3, stride=2, padding=1, ceil_mode=True),
        lambda x: gapjax.lp_pool(x, 3.0, 2, stride=1),
        lambda x: gapjax.adaptive_avg_pool(x, (3, 2)),
        lambda x: gapjax.max_pool(x, 3, stride=2, padding=1),
        lambda x: gapjax.adaptive_max_pool(x, (3, 4)),
        lambda x: gapjax.stochastic_pool(x, 2, train=False),
    ],
)
def test_gradients_check_numerically(fn):
    x = np.random.default_rng(3).uniform(0.5, 2.0, (2, 5, 5, 2))
    with jax.enable_x64(True):
        check_grads(
            fn, (jnp.asarray(x, jnp.float64),), order=1, modes=["rev"], atol=1e-3, rtol=1e-3
        )


def test_max_gradient_goes_to_one_winner_on_ties():
    x = jnp.ones((1, 4, 4, 1))
    g = jax.grad(lambda v: gapjax.max_pool(v, 2).sum())(x)
    np.testing.assert_array_equal(g[0, :, :, 0], [[1, 0, 1, 0], [0, 0, 0, 0]] * 2)
    # Overlapping windows: the shared first cell collects both.
    g = jax.grad(lambda v: gapjax.max_pool(v, 2, stride=1).sum())(jnp.ones((1, 3, 1)))
    np.testing.assert_array_equal(g[0, :, 0], [1, 1, 0])


def test_nan_propagates_and_wins():
    x = jnp.array([1.0, 3.0, 3.0, np.nan, 2.0, np.nan, 0.0]).reshape(1, 7, 1)
    y, i = gapjax.max_pool(x, 3, stride=2, return_indices=True)  # recorded from torch 2.13.0
    np.testing.assert_array_equal(y[0, :, 0], [3.0, np.nan, np.nan])
    np.testing.assert_array_equal(i[0, :, 0], [1, 3, 5])
    a = gapjax.avg_pool(x, 2)
    assert np.isnan(a[0, 1, 0]) and not np.isnan(a[0, 0, 0])


def test_all_minus_inf_window_points_at_its_first_cell():
    x = jnp.full((1, 3, 1), -jnp.inf)
    y, i = gapjax.max_pool(x, 2, stride=1, padding=1, return_indices=True)
    np.testing.assert_array_equal(i[0, :, 0], [0, 0, 1, 2])  # torch 2.13.0
    assert np.all(np.isneginf(y))


def test_unpool_round_trip():
    x = jnp.asarray(ties((2, 6, 7, 3)))
    y, i = gapjax.max_pool(x, 2, return_indices=True)
    u = gapjax.max_unpool(y, i, 2, output_size=(6, 7))
    assert u.shape == x.shape
    # Every pooled value sits at its index, everything else is 0.
    flat_u = np.asarray(u).reshape(2, -1, 3)
    flat_x = np.asarray(x).reshape(2, -1, 3)
    flat_i = np.asarray(i).reshape(2, -1, 3)
    for b, c in itertools.product(range(2), range(3)):
        np.testing.assert_array_equal(flat_u[b, flat_i[b, :, c], c], flat_x[b, flat_i[b, :, c], c])
        rest = np.setdiff1d(np.arange(42), flat_i[b, :, c])
        np.testing.assert_array_equal(flat_u[b, rest, c], 0)
    # Pooling the unpooled map again gives the same maxima where they are non-negative.
    again = gapjax.max_pool(u, 2)
    np.testing.assert_array_equal(np.maximum(again, 0), np.maximum(y, 0))
    assert gapjax.max_unpool(y, i, 2).shape == (2, 6, 6, 3)  # PyTorch's default size


def test_low_precision_accumulates_in_float32_and_keeps_dtype():
    x = jnp.full((1, 64, 1), 1000.0, jnp.float16) + jnp.arange(64, dtype=jnp.float16)[None, :, None]
    y = gapjax.avg_pool(x, 64)
    assert y.dtype == jnp.float16
    expected = np.mean(np.asarray(x, np.float32))
    np.testing.assert_allclose(np.float32(y[0, 0, 0]), expected, rtol=1e-3)
    b = gapjax.max_pool(x.astype(jnp.bfloat16), 4)
    assert b.dtype == jnp.bfloat16
    i = gapjax.max_pool(jnp.arange(12).reshape(1, 12, 1), 3)
    assert i.dtype == jnp.arange(1).dtype
    np.testing.assert_array_equal(i[0, :, 0], [2, 5, 8, 11])
    assert gapjax.avg_pool(jnp.arange(4).reshape(1, 4, 1), 2).dtype == jnp.float32


def test_leading_axes_unbatched_vmap_and_jit():
    x = jnp.asarray(ties((2, 3, 8, 8, 4)))
    full = gapjax.max_pool(x, (3, 3), stride=2)  # any leading axes with a tuple kernel
    per = jax.vmap(lambda v: gapjax.max_pool(v, 3, stride=2))(x)
    np.testing.assert_array_equal(full, per)
    np.testing.assert_array_equal(gapjax.max_pool(x[0, 0], (3, 3), stride=2), full[0, 0])
    jitted = jax.jit(lambda v: gapjax.avg_pool(v, [2, 2], padding=[(1, 0), (0, 1)]))
    np.testing.assert_allclose(
        jitted(x[0]), gapjax.avg_pool(x[0], (2, 2), padding=((1, 0), (0, 1)))
    )


def test_no_retracing():
    x = jnp.ones((2, 8, 8, 3))
    gapjax.max_pool(x, 3, stride=2)
    n = gapjax.max_pool.jitted._cache_size()
    gapjax.max_pool(x + 1, 3, stride=2)
    gapjax.max_pool(x, [3, 3], stride=(2, 2))  # different spelling, different cache entry
    gapjax.max_pool(x * 2, [3, 3], stride=(2, 2))
    assert gapjax.max_pool.jitted._cache_size() == n + 1


# --------------------------------------------------------------------------------------------
# Stochastic pooling.
# --------------------------------------------------------------------------------------------


def test_stochastic_eval_formula_and_zero_windows():
    x = np.abs(ties((2, 8, 6, 3))) * (ties((2, 8, 6, 3), 5) > 0)
    y = gapjax.stochastic_pool(jnp.asarray(x), 2, train=False)
    blocks = x.reshape(2, 4, 2, 3, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(2, 4, 3, 3, 4)
    den = blocks.sum(-1)
    ref = np.where(den > 0, (blocks**2).sum(-1) / np.where(den > 0, den, 1), 0)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    z = gapjax.stochastic_pool(jnp.zeros((1, 4, 4, 1)), 2, train=True, key=jax.random.key(0))
    np.testing.assert_array_equal(z, 0)


def test_stochastic_train_frequencies_match_probabilities():
    """Chi-square over 20,000 windows, every one [1, 2, 3, 0, 4] (p = a / 10), fixed key."""
    window = np.array([1.0, 2.0, 3.0, 0.0, 4.0], np.float32)
    x = jnp.asarray(np.tile(window, 20000).reshape(1, -1, 1))
    y = np.asarray(gapjax.stochastic_pool(x, 5, train=True, key=jax.random.key(42)))[0, :, 0]
    counts = np.array([(y == v).sum() for v in window])
    assert counts[3] == 0  # a zero activation is never drawn
    expected = window / window.sum() * len(y)
    keep = expected > 0
    chi2 = (((counts - expected) ** 2)[keep] / expected[keep]).sum()
    assert chi2 < 16.27  # 3 degrees of freedom, p = 0.001


def test_stochastic_train_gradient_goes_to_the_sampled_cell():
    x = jnp.array([[[1.0], [2.0], [3.0], [4.0]]])
    key = jax.random.key(7)
    y = gapjax.stochastic_pool(x, 4, train=True, key=key)
    g = jax.grad(lambda v: gapjax.stochastic_pool(v, 4, train=True, key=key).sum())(x)
    chosen = int(np.flatnonzero(np.asarray(x[0, :, 0]) == float(y[0, 0, 0]))[0])
    np.testing.assert_array_equal(g[0, :, 0], np.eye(4)[chosen])


# --------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------

ERRORS = [
    (lambda: gapjax.max_pool(jnp.ones((1, 4, 1)), 5), "larger than spatial axis"),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 1)), 3, padding=2), "more than half"),
    (
        lambda: gapjax.avg_pool(jnp.ones((1, 8, 1)), 3, padding=3, convention="caffe"),
        "smaller than the kernel",
    ),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 1)), 3, stride=0), "stride must be >= 1"),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 1)), -1), "kernel_size must be >= 1"),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 1)), 3, padding=-1), "padding must be >= 0"),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 1)), 3, padding="full"), "padding must be"),
    (lambda: gapjax.max_pool(jnp.ones((8, 1)), (3, 3)), "cannot hold 2 spatial axes"),
    (lambda: gapjax.max_pool(jnp.ones((8, 1)), 3), "rank 3, 4 or 5"),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 8, 1)), (3, 3), stride=(1, 1, 1)), "sequence of 2"),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 1)), 3, data_format="NHWC"), "data_format"),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 1)), 3, convention="tf"), "convention"),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 1)), 3, padding="same", convention="caffe"), "Caffe"),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 1)), 3, padding="same", ceil_mode=True), "ceil_mode"),
    (lambda: gapjax.max_pool(jnp.ones((1, 8, 1)), 3, dilation=2, convention="caffe"), "dilation"),
    (lambda: gapjax.avg_pool(jnp.ones((1, 8, 1)), 2, divisor_override=0), "divisor_override"),
    (lambda: gapjax.lp_pool(jnp.ones((1, 8, 1)), 0.0, 2), "p must be > 0"),
    (lambda: gapjax.stochastic_pool(jnp.ones((1, 8, 1)), 2, train=True), "key"),
    (lambda: gapjax.adaptive_avg_pool(jnp.ones((1, 8, 1)), 0), "output_size"),
    (lambda: gapjax.adaptive_max_pool(jnp.ones((8, 8, 1)), (2, 2, 2)), "cannot hold 3"),
    (
        lambda: gapjax.max_unpool(jnp.ones((1, 4, 1)), jnp.zeros((1, 3, 1), int), 2),
        "indices of shape",
    ),
    (lambda: gapjax.max_unpool(jnp.ones((1, 4, 1)), jnp.zeros((1, 4, 1)), 2), "integers"),
    (
        lambda: gapjax.max_unpool(
            jnp.ones((1, 4, 1)), jnp.zeros((1, 4, 1), int), 2, output_size=(20,)
        ),
        "output_size",
    ),
]


@pytest.mark.parametrize("call,message", ERRORS, ids=[m for _, m in ERRORS])
def test_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------------------------
# Live comparison with PyTorch (skipped without torch).
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("p,d", [(0, 1), (1, 1), (1, 2)])
def test_live_max_and_avg_against_torch(p, d, ceil):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = ties((2, 3, 9, 10), seed=11)
    t = torch.tensor(x, requires_grad=True)
    ty, ti = F.max_pool2d(t, 3, 2, p, d, ceil_mode=ceil, return_indices=True)
    w = ties(tuple(ty.shape), seed=12)
    (ty * torch.tensor(w)).sum().backward()
    xl = jnp.asarray(nhwc(x))
    kw = dict(stride=2, padding=p, dilation=d, ceil_mode=ceil)
    y, i = gapjax.max_pool(xl, 3, return_indices=True, **kw)
    np.testing.assert_array_equal(nchw(y), ty.detach().numpy())
    np.testing.assert_array_equal(nchw(i), ti.numpy())
    g = jax.grad(lambda v: jnp.sum(gapjax.max_pool(v, 3, **kw) * jnp.asarray(nhwc(w))))(xl)
    np.testing.assert_allclose(nchw(g), t.grad.numpy())
    if d == 1:
        for include in (True, False):
            ta = F.avg_pool2d(torch.tensor(x), 3, 2, p, ceil_mode=ceil, count_include_pad=include)
            ya = gapjax.avg_pool(
                xl, 3, stride=2, padding=p, ceil_mode=ceil, count_include_pad=include
            )
            np.testing.assert_allclose(nchw(ya), ta.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: gapjax.max_pool(x, 3, stride=2, padding=1),
        lambda x: gapjax.max_pool(x, 2, stride=1, dilation=2, ceil_mode=True),
        lambda x: gapjax.min_pool(x, (3, 2), stride=(2, 3), padding=(1, 0), ceil_mode=True),
        lambda x: gapjax.avg_pool(x, 3, stride=2, ceil_mode=True),
        lambda x: gapjax.avg_pool(x, 3, stride=1, padding="same"),
        lambda x: gapjax.adaptive_max_pool(x, (4, 3)),
        lambda x: gapjax.adaptive_avg_pool(x, (3, 3)),
        lambda x: gapjax.max_pool(x, 7, stride=1, padding=3),  # 49 cells: axis by axis
    ],
)
def test_forward_and_reverse_mode_agree_and_compose_with_vmap(fn):
    """Forward mode, vmap of grad (per-example gradients) and forward-over-reverse HVPs work
    through the custom JVP rules. (The gradient values themselves are checked against the NumPy
    reference, numerically and against PyTorch above.)"""
    x = jnp.asarray(ties((2, 7, 8, 2), seed=4))
    np.testing.assert_allclose(jax.jacfwd(fn)(x), jax.jacrev(fn)(x), atol=1e-6)

    def loss(v):
        return jnp.sum(fn(v) ** 2)

    per_example = jax.vmap(lambda v: jax.grad(loss)(v[None])[0])(x)
    np.testing.assert_allclose(per_example, jax.grad(loss)(x), rtol=1e-6, atol=1e-6)
    hvp = jax.jvp(jax.grad(loss), (x,), (jnp.ones_like(x),))[1]
    assert hvp.shape == x.shape and np.all(np.isfinite(hvp))


# --------------------------------------------------------------------------------------------
# Hostile input (issue 20): empty arrays, windows of padding only, huge kernels, bad types.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 4, 4, 2), (2, 4, 4, 0)], ids=["batch0", "channels0"])
def test_size_zero_batch_and_channels(shape):
    x = jnp.ones(shape)
    out_shape = (shape[0], 2, 2, shape[-1])
    for fn in (gapjax.max_pool, gapjax.min_pool):
        y, i = fn(x, 2, return_indices=True)
        assert y.shape == i.shape == out_shape and i.dtype == jnp.int32
        assert jax.grad(lambda v, f=fn: f(v, 2).sum())(x).shape == shape
        back = gapjax.max_unpool(y, i, 2)
        assert back.shape == shape
    y, i = gapjax.adaptive_max_pool(x, 3, return_indices=True)
    assert y.shape == i.shape == (shape[0], 3, 3, shape[-1])
    for call in (
        lambda v: gapjax.avg_pool(v, 2),
        lambda v: gapjax.lp_pool(v, 2.0, 2),
        lambda v: gapjax.adaptive_avg_pool(v, 3),
        lambda v: gapjax.stochastic_pool(v, 2, train=False),
        lambda v: gapjax.stochastic_pool(v, 2, train=True, key=jax.random.key(0)),
    ):
        assert call(x).shape[1:-1] in ((2, 2), (3, 3))
        assert jax.grad(lambda v, c=call: c(v).sum())(x).shape == shape


@pytest.mark.parametrize(
    "call",
    [
        # PyTorch returns -inf with index 2 (outside x) for this one.
        lambda: gapjax.max_pool(jnp.ones((1, 2, 1)), 2, stride=1, dilation=3, padding=1),
        lambda: gapjax.max_pool(jnp.ones((1, 0, 1)), 2, padding=1, return_indices=True),
        lambda: gapjax.avg_pool(jnp.ones((1, 0, 3, 1)), (2, 1), padding=(1, 0)),
        lambda: gapjax.max_pool(jnp.ones((1, 0, 1)), 2, padding=1, convention="caffe"),
    ],
)
def test_windows_of_padding_only_raise(call):
    with pytest.raises(ValueError, match=r"read only padding .*kernel_size .*padding"):
        call()


def test_pytorch_padding_limit_ignores_dilation():
    """PyTorch checks padding <= kernel_size // 2 with the kernel itself, not the dilated one
    (torch 2.13: "padding should be at most half of kernel size")."""
    with pytest.raises(ValueError, match=r"more than half the kernel_size 2"):
        gapjax.max_pool(jnp.ones((1, 2, 1)), 2, dilation=5, padding=3)
    with pytest.raises(ValueError, match=r"more than half the kernel_size 3"):
        gapjax.max_pool(jnp.ones((1, 8, 1)), 3, stride=1, dilation=2, padding=2)
    assert gapjax.max_pool(jnp.ones((1, 8, 1)), 3, stride=1, dilation=2, padding=1).shape == (
        1,
        6,
        1,
    )


def test_huge_kernel_with_same_padding_drops_padding_taps():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 6, 3)), jnp.float32)
    y = gapjax.avg_pool(x, 10**6, padding="same")  # used to trace 10**12 taps
    np.testing.assert_allclose(y[:, 0, 0], x.mean((1, 2)), rtol=1e-5)
    # Stride 1: every window covers all of x, so an 11-cell kernel gives the same values.
    big = gapjax.max_pool(x, 10**5, stride=1, padding="same")
    np.testing.assert_array_equal(big, gapjax.max_pool(x, 11, stride=1, padding="same"))
    w = _windows.windowed_axis(6, 10**6, 1, (499999, 500000), 1, 6)
    assert w.taps <= 11 and (w.inside == 10**6).all()
    # count_include_pad=True still divides by the whole kernel (PyTorch's rule, padding counts).
    a = gapjax.avg_pool(x, 7, stride=1, padding="same", count_include_pad=True)
    np.testing.assert_allclose(a[0, 3, 3], x[0].sum((0, 1)) / 49, rtol=1e-5)


def test_kernel_larger_than_padded_input_names_the_sizes():
    with pytest.raises(ValueError, match=r"kernel_size 10 .*larger than spatial axis 0 .*6 \+"):
        gapjax.avg_pool(jnp.ones((1, 6, 1)), 10, padding=1)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x: gapjax.avg_pool(x, 2, count_include_pad="no"), "avg_pool: count_include_pad"),
        (lambda x: gapjax.avg_pool(x, 2, ceil_mode="no"), "avg_pool: ceil_mode must be a bool"),
        (lambda x: gapjax.max_pool(x, 2, return_indices=1), "max_pool: return_indices"),
        (lambda x: gapjax.max_pool(x, 2.0), "max_pool: kernel_size must be an int"),
        (lambda x: gapjax.max_pool(x, True), "max_pool: kernel_size must be an int"),
        (lambda x: gapjax.max_pool(x, jnp.array(2)), "max_pool: kernel_size is a static"),
        (lambda x: gapjax.max_pool(x, 2, stride=1.5), "max_pool: stride must be an int"),
        (lambda x: gapjax.avg_pool(x, 2, padding=0.5), "avg_pool: padding must be"),
        (lambda x: gapjax.adaptive_avg_pool(x, 2.0), "adaptive_avg_pool: output_size"),
        (lambda x: gapjax.adaptive_max_pool(x, (2, True)), "adaptive_max_pool: output_size"),
        (lambda x: gapjax.stochastic_pool(x, 2, train="no"), "stochastic_pool: train"),
    ],
)
def test_window_settings_of_the_wrong_type(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call(jnp.ones((1, 4, 4, 1)))


def test_numpy_integer_sizes_are_accepted_everywhere():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 6, 2)), jnp.float32)
    i = np.int64
    np.testing.assert_array_equal(gapjax.adaptive_avg_pool(x, i(2)), gapjax.adaptive_avg_pool(x, 2))
    np.testing.assert_array_equal(
        gapjax.adaptive_max_pool(x, (i(3), None)), gapjax.adaptive_max_pool(x, (3, None))
    )
    np.testing.assert_array_equal(
        gapjax.max_pool(x, i(2), stride=np.int32(2), padding=i(1), ceil_mode=np.bool_(True)),
        gapjax.max_pool(x, 2, stride=2, padding=1, ceil_mode=True),
    )
    y, idx = gapjax.max_pool(x, 2, return_indices=True)
    np.testing.assert_array_equal(
        gapjax.max_unpool(y, idx, i(2), output_size=(i(6), i(6))), gapjax.max_unpool(y, idx, 2)
    )
