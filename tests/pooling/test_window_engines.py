"""The window-reduction engine (``_windows._box_*``: one ``lax.reduce_window`` per pool) against
the same references as the tap engine.

Large windows (more than ``_BOX_MIN_CELLS`` cells) run as window reductions (a reshape and a
sum where they tile the input), small ones as taps. Every test of ``test_window_pool`` listed
in RERUN (NumPy references, values and gradients recorded from PyTorch 2.13.0, Caffe's rules,
NaN and -inf, forward mode, vmap) runs here again with every plain sliding window sent to the window
reductions, so both engines meet the same contract. The tests below them check real large
windows at the default threshold, and that the program does not grow with the window.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_window_pool as W

import gapjax
from gapjax.pooling import _windows


@pytest.fixture
def box_engine(monkeypatch):
    monkeypatch.setattr(_windows, "_BOX_MIN_CELLS", 0)
    jax.clear_caches()  # the public functions are jitted: drop programs traced with taps
    yield
    jax.clear_caches()


def _rerun(test):
    @functools.wraps(test)
    def rerun(*args, **kwargs):
        return test(*args, **kwargs)

    rerun.pytestmark = [*getattr(test, "pytestmark", []), pytest.mark.usefixtures("box_engine")]
    return rerun


RERUN = [
    "test_ceil_mode_overhang_divisor",
    "test_caffe_empty_window",
    "test_caffe_clamps_to_flt_max_without_gradient",
    "test_max_min_values_indices_and_gradients_match_the_reference",
    "test_avg_matches_the_reference",
    "test_avg_divisor_override_and_caffe_rule_match_the_reference",
    "test_lp_matches_the_reference_including_pytorchs_overhang_scaling",
    "test_matches_values_recorded_from_pytorch",
    "test_adaptive_pools_match_the_reference",
    "test_adaptive_none_keeps_an_axis_and_one_is_global",
    "test_gradients_check_numerically",
    "test_max_gradient_goes_to_one_winner_on_ties",
    "test_nan_propagates_and_wins",
    "test_all_minus_inf_window_points_at_its_first_cell",
    "test_unpool_round_trip",
    "test_low_precision_accumulates_in_float32_and_keeps_dtype",
    "test_leading_axes_unbatched_vmap_and_jit",
    "test_forward_and_reverse_mode_agree_and_compose_with_vmap",
    "test_size_zero_batch_and_channels",
]
for _name in RERUN:
    globals()[_name.replace("test_", "test_box_", 1)] = _rerun(getattr(W, _name))


@pytest.fixture
def region_taps(monkeypatch):
    # The forward extreme of small windows reads clamped positions in one loop where it can
    # (``_windows._clamped``); this sends it to the interior/border regions instead.
    monkeypatch.setattr(_windows, "_clamped", lambda w: None)
    jax.clear_caches()
    yield
    jax.clear_caches()


REGION_RERUN = [
    "test_max_min_values_indices_and_gradients_match_the_reference",
    "test_matches_values_recorded_from_pytorch",
    "test_adaptive_pools_match_the_reference",
    "test_nan_propagates_and_wins",
    "test_all_minus_inf_window_points_at_its_first_cell",
    "test_caffe_clamps_to_flt_max_without_gradient",
]
for _name in REGION_RERUN:
    _test = getattr(W, _name)
    _wrapped = functools.wraps(_test)(lambda *a, _t=_test, **k: _t(*a, **k))
    _wrapped.pytestmark = [
        *getattr(_test, "pytestmark", []),
        pytest.mark.usefixtures("region_taps"),
    ]
    globals()[_name.replace("test_", "test_regions_", 1)] = _wrapped


@pytest.fixture
def clamped_strided(monkeypatch):
    # Strided windows keep the regions by default (``_windows._CLAMP_STRIDED``); the benchmark
    # that justifies it times the clamped reads for them too, which must stay exact.
    monkeypatch.setattr(_windows, "_CLAMP_STRIDED", True)
    jax.clear_caches()
    yield
    jax.clear_caches()


@pytest.mark.usefixtures("clamped_strided")
@pytest.mark.parametrize("name", sorted(W.RECORDED["cases"]))
def test_clamped_strided_windows_match_values_recorded_from_pytorch(name):
    W.test_matches_values_recorded_from_pytorch(name)


@pytest.mark.parametrize(
    "length,kernel,stride,pad,dilation",
    [(32, 3, 1, (1, 1), 1), (32, 3, 2, (0, 1), 1), (9, 5, 2, (2, 2), 1), (10, 3, 3, (1, 1), 1)],
)
def test_clamped_reads_are_cells_of_the_same_window(length, kernel, stride, pad, dilation):
    out = _windows.output_length(length, kernel, stride, pad, dilation, True, "caffe")
    w = _windows.windowed_axis(length, kernel, stride, pad, dilation, out)
    clamped = _windows._clamped(w)
    assert clamped is not None
    for i in range(w.out):
        cells = {int(w.src(j)[i]) for j in range(w.taps)} - {-1}
        assert {int(c[i]) for c in clamped} == cells  # every cell read, no other


def test_clamping_is_refused_where_it_would_read_another_window():
    # Dilation 2 from the padding: tap 0 of output 0 reads -1, whose nearest cell 0 is not in
    # the window {-1, 1, 3}.
    assert _windows._clamped(_windows.windowed_axis(9, 3, 1, (1, 1), 2, 7)) is None
    # Caffe's rounding makes a last window outside the input (L=6, k=1, s=2: 4 windows).
    w = _windows.windowed_axis(6, 1, 2, (0, 0), 1, 4)
    assert _windows.empty_windows(w).any() and _windows._clamped(w) is None
    # Adaptive windows of unequal sizes ([0, 3), [2, 6), [5, 8)): a short window's missing tap
    # repeats its last cell.
    a = _windows.adaptive_axis(8, 3)
    want = [[0, 2, 5], [1, 3, 6], [2, 4, 7], [2, 5, 7]]
    assert [[int(v) for v in c] for c in _windows._clamped(a)] == want


def test_small_padded_extreme_is_one_loop_without_pads():
    jaxpr = str(
        jax.make_jaxpr(lambda v: gapjax.max_pool(v, 3, stride=1, padding=1))(
            jnp.zeros((2, 8, 8, 3))
        )
    )
    assert "concatenate" not in jaxpr and " pad[" not in jaxpr


def test_box_engine_is_what_the_fixture_selects(box_engine):
    windows = [_windows.windowed_axis(9, 3, 2, (1, 1), 1, 5)]
    assert _windows._large_box(_windows.stages((1,), windows)) is not None


def test_default_threshold_keeps_small_windows_on_taps():
    small = _windows.stages((1, 2), [_windows.adaptive_axis(9, 3)] * 2)  # 3x3 tiles
    assert _windows._box(small).tiles and _windows._large_box(small) is None
    big = _windows.stages((1, 2), [_windows.windowed_axis(20, 7, 1, (3, 3), 1, 20)] * 2)
    assert _windows._large_box(big).kernel == (7, 7)
    tiles = _windows.stages((1, 2), [_windows.adaptive_axis(56, 7)] * 2)  # 8x8: a reshape
    assert _windows._large_box(tiles).tiles


@pytest.mark.parametrize(
    "spatial,k,s,p,d,ceil",
    [
        ((13, 12), 7, 1, 3, 1, False),  # 49 cells
        ((15, 14), 6, 4, 2, 1, True),  # ceil-mode overhang
        ((17,), 40, 3, 20, 1, True),  # 1-D, windows longer than the input
        ((9, 8, 9), 4, 2, 1, 1, True),  # 3-D, 64 cells
        ((14, 13), 6, 2, 2, 2, False),  # dilated
    ],
)
@pytest.mark.parametrize("op", ["max", "min", "avg"])
def test_large_windows_match_the_reference(spatial, k, s, p, d, ceil, op):
    x = W.ties((2, 3, *spatial), seed=5)
    x[0, 1].flat[7] = np.nan
    x[1, 2] = -np.inf
    kernel = (k,) * len(spatial)
    kw = dict(stride=s, padding=p, ceil_mode=ceil)
    if op == "avg":
        if d != 1:
            pytest.skip("avg_pool has no dilation")
        finite = np.nan_to_num(x, nan=2.0, neginf=-1.0)
        y = gapjax.avg_pool(jnp.asarray(W.nhwc(finite)), kernel, **kw)
        ry, _ = W.ref_pool(finite, "avg", k, s, p, 1, ceil)
        np.testing.assert_allclose(W.nchw(y), ry, rtol=1e-5, atol=1e-5)
        g = jax.grad(lambda v: jnp.sum(gapjax.avg_pool(v, kernel, **kw) ** 2))(
            jnp.asarray(W.nhwc(finite))
        )
        assert np.all(np.isfinite(g))
        return
    fn = gapjax.max_pool if op == "max" else gapjax.min_pool
    y, i = fn(jnp.asarray(W.nhwc(x)), kernel, return_indices=True, dilation=d, **kw)
    ry, ri = W.ref_pool(x, op, k, s, p, d, ceil)
    np.testing.assert_array_equal(W.nchw(y), ry)
    np.testing.assert_array_equal(W.nchw(i), ri)
    w = W.ties(ry.shape, seed=6)
    clean = np.where(np.isnan(x), 0.0, x).astype(np.float32)
    _, rci = W.ref_pool(clean, op, k, s, p, d, ceil)
    g = jax.grad(lambda v: jnp.sum(fn(v, kernel, dilation=d, **kw) * jnp.asarray(W.nhwc(w))))(
        jnp.asarray(W.nhwc(clean))
    )
    np.testing.assert_allclose(W.nchw(g), W.ref_max_grad(x.shape, rci, w))


def test_adaptive_global_window_of_a_volume():
    x = W.ties((2, 4, 11, 11, 11), seed=7)
    x[1, 3, 5, 5, 5] = np.nan
    xl = jnp.asarray(W.nhwc(x))
    y, i = gapjax.adaptive_max_pool(xl, 1, return_indices=True)
    flat = x.reshape(2, 4, -1)
    np.testing.assert_array_equal(W.nchw(y).reshape(2, 4), flat.max(-1))
    want = np.where(np.isnan(flat).any(-1), np.isnan(flat).argmax(-1), flat.argmax(-1))
    np.testing.assert_array_equal(W.nchw(i).reshape(2, 4), want)
    np.testing.assert_allclose(
        W.nchw(gapjax.adaptive_avg_pool(xl, 1)).reshape(2, 4), flat.mean(-1), rtol=1e-5
    )


@pytest.mark.parametrize("out", [(40, 1), (1, 37), (1, 1)])
def test_windows_over_a_whole_axis_keep_nan(out):
    # XLA turns a window over a whole axis into a reduce, whose CPU max drops NaN.
    x = W.ties((2, 3, 40, 37), seed=8)
    x[0, 1, 5, 9] = x[1, 2, 39, 36] = np.nan
    y, i = gapjax.adaptive_max_pool(jnp.asarray(W.nhwc(x)), out, return_indices=True)
    ry, ri = W.ref_pool(x, "max", (40 // out[0], 37 // out[1]), (40 // out[0], 37 // out[1]), 0)
    np.testing.assert_array_equal(W.nchw(y), ry)
    np.testing.assert_array_equal(W.nchw(i), ri)
    g = jax.grad(lambda v: jnp.sum(gapjax.adaptive_max_pool(v, out)))(jnp.asarray(W.nhwc(x)))
    np.testing.assert_array_equal(W.nchw(g), W.ref_max_grad(x.shape, ri, np.ones(ry.shape)))


@pytest.mark.parametrize("op", ["max", "min"])
def test_one_window_over_every_axis_is_exact(op):
    # The value of a global window is XLA's reduce plus a NaN test: NaN wins, -inf/+inf-only
    # windows stay infinite, Caffe's floor clamps them, and the gradient reaches the winner.
    x = W.ties((2, 3, 7, 6), seed=9)
    x[0, 1, 4, 2] = np.nan
    x[1, 2] = -np.inf if op == "max" else np.inf
    fn = gapjax.max_pool if op == "max" else gapjax.min_pool
    xl = jnp.asarray(W.nhwc(x))
    y, i = fn(xl, (7, 6), return_indices=True)
    flat = x.reshape(2, 3, -1)
    want = flat.max(-1) if op == "max" else flat.min(-1)
    np.testing.assert_array_equal(W.nchw(y).reshape(2, 3), want)
    best = flat.argmax(-1) if op == "max" else flat.argmin(-1)
    np.testing.assert_array_equal(
        W.nchw(i).reshape(2, 3), np.where(np.isnan(flat).any(-1), np.isnan(flat).argmax(-1), best)
    )
    if op == "max":
        big = np.finfo(np.float32).max
        yc = gapjax.max_pool(xl, (7, 6), convention="caffe")
        np.testing.assert_array_equal(W.nchw(yc).reshape(2, 3), np.where(want < -big, -big, want))
    clean = np.where(np.isnan(x), 0.0, x).astype(np.float32)
    g = jax.grad(lambda v: jnp.sum(fn(v, (7, 6))))(jnp.asarray(W.nhwc(clean)))
    cflat = clean.reshape(2, 3, -1)
    win = cflat.argmax(-1) if op == "max" else cflat.argmin(-1)
    want_g = np.zeros_like(cflat)
    np.put_along_axis(want_g, win[..., None], 1.0, -1)
    np.testing.assert_array_equal(W.nchw(g), want_g.reshape(x.shape))


def _count(jaxpr) -> int:
    """Equations of a jaxpr, those of the jaxprs inside it (jit, custom rules...) included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    n += _count(inner if hasattr(inner, "eqns") else inner.jaxpr)
    return n


def _equations(fn, shape) -> int:
    return _count(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(fn(v))))(jnp.zeros(shape)).jaxpr)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_program_does_not_grow_with_the_window(pool):
    fn = gapjax.max_pool if pool == "max" else gapjax.avg_pool
    sizes = [
        _equations(lambda v, k=k: fn(v, k, stride=1, padding=k // 2), (1, 40, 40, 2))
        for k in (7, 15, 31)
    ]
    assert sizes[0] == sizes[1] == sizes[2], sizes
    adaptive = gapjax.adaptive_max_pool if pool == "max" else gapjax.adaptive_avg_pool
    sizes = [_equations(lambda v: adaptive(v, 1), (1, n, n, n, 2)) for n in (5, 11, 21)]
    assert sizes[0] == sizes[1] == sizes[2], sizes
