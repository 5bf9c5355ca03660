"""Tests of gapjax.pooling.global_pool against NumPy references, plus the shared contract."""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    LAYOUTS,
    distinct_values,
    np_pool,
    ref_attention,
    ref_avg,
    ref_avgmax,
    ref_gem,
    ref_lp,
    ref_lse,
    ref_max,
    ref_min,
    ref_mixed,
    ref_soft,
    ref_stochastic_eval,
    ref_sum,
    ref_topk,
    ref_weighted,
    sites,
)
from jax.test_util import check_grads

import gapjax
from gapjax import pooling


@dataclasses.dataclass(frozen=True)
class Case:
    """One entry of the registry of every global pooling function.

    ``fn`` is called as ``fn(x, *site_arrays, **kwargs)``; ``site`` is the number of per-position
    arrays it takes (weights, scores), generated with shape (batch, *spatial).
    """

    id: str
    fn: Callable
    ref: Callable
    kwargs: dict = dataclasses.field(default_factory=dict)
    params: dict = dataclasses.field(default_factory=dict)  # reference parameters
    site: int = 0
    mean_like: bool = True  # a constant map pools to that constant
    keeps_int: bool = False  # integer input keeps an integer dtype


REGISTRY = [
    Case("avg", gapjax.global_avg_pool, ref_avg),
    Case("sum", gapjax.global_sum_pool, ref_sum, mean_like=False, keeps_int=True),
    Case("max", gapjax.global_max_pool, ref_max, keeps_int=True),
    Case("min", gapjax.global_min_pool, ref_min, keeps_int=True),
    Case("lp", gapjax.global_lp_pool, ref_lp, {"p": 3.0}, {"p": 3.0}, mean_like=False),
    Case("gem", gapjax.gem_pool, ref_gem, {"p": 2.5}, {"p": 2.5}),
    Case("lse", gapjax.lse_pool, ref_lse, {"r": 2.0}, {"r": 2.0}),
    Case("topk", gapjax.topk_pool, ref_topk, {"k": 3}, {"k": 3}),
    Case(
        "wildcat",
        gapjax.topk_pool,
        ref_topk,
        {"k": 0.3, "k_min": 2, "alpha": 0.7, "halve": True},
        {"k": 0.3, "k_min": 2, "alpha": 0.7, "halve": True},
        mean_like=False,
    ),
    Case("mixed", gapjax.mixed_pool, ref_mixed, {"alpha": 0.3}, {"alpha": 0.3}),
    Case("avgmax", gapjax.avgmax_pool, ref_avgmax),
    Case("soft", gapjax.soft_pool, ref_soft),
    Case("weighted", gapjax.weighted_avg_pool, ref_weighted, site=1),
    Case("attention", gapjax.attention_pool, ref_attention, site=1),
    Case("stochastic_eval", gapjax.global_stochastic_pool, ref_stochastic_eval, {"train": False}),
]
# catavgmax is avg and max concatenated: checked against both below, and in the contract.
CASES = {c.id: c for c in REGISTRY}
LAYOUT_IDS = [lay.name for lay in LAYOUTS]


def test_registry_covers_every_public_function():
    covered = {c.fn.__name__ for c in REGISTRY} | {"catavgmax_pool"}
    assert covered == set(pooling.global_pool.__all__)
    assert set(pooling.__all__) <= set(gapjax.__all__)


def make_inputs(case, layout, rng, *, masked=False, positive=True):
    x = distinct_values(rng, layout.shape, 0.1 if positive else -1.0, 2.0)
    site = [rng.uniform(0.2, 1.5, layout.site_shape).astype(np.float32) for _ in range(case.site)]
    mask = None
    if masked:
        mask = rng.random(layout.site_shape) < 0.6
        # One fully masked row exercises fill_value; keep at least one valid elsewhere.
        mask[0] = False
        mask[1].flat[0] = True
    return x, site, mask


def reference(case, layout, x, site, mask, fill=0.0):
    expand = layout.expand_site
    return np_pool(
        x,
        layout.axes,
        case.ref,
        mask=None if mask is None else expand(mask),
        site_arrays=tuple(expand(s) for s in site),
        params=case.params,
        fill=fill,
    )


def call(case, x, site=(), **kw):
    return case.fn(x, *site, **{**case.kwargs, **kw})


# --------------------------------------------------------------------------------------------
# Values against the NumPy references.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("case", REGISTRY, ids=[c.id for c in REGISTRY])
def test_matches_numpy_reference(case, layout, masked, rng):
    x, site, mask = make_inputs(case, layout, rng, masked=masked, positive=case.id != "avg")
    y = call(case, x, site, mask=mask, fill_value=-7.0, **layout.kwargs)
    want = reference(case, layout, x, site, mask, fill=-7.0)
    assert y.shape == want.shape
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_catavgmax_concatenates_avg_then_max(layout, rng):
    x = rng.normal(size=layout.shape).astype(np.float32)
    y = gapjax.catavgmax_pool(x, keepdims=True, **layout.kwargs)
    # With axis=(1, 3) on a 4-D input, the last axis kept is 2.
    cat_axis = layout.channel_axis if layout.channel_axis is not None else 2
    avg = np.expand_dims(np_pool(x, layout.axes, ref_avg), layout.axes)
    mx = np.expand_dims(np_pool(x, layout.axes, ref_max), layout.axes)
    np.testing.assert_allclose(y, np.concatenate([avg, mx], axis=cat_axis), rtol=1e-5, atol=1e-6)
    flat = gapjax.catavgmax_pool(x, **layout.kwargs)
    np.testing.assert_array_equal(flat, np.squeeze(y, layout.axes))


def test_catavgmax_rejects_pooling_every_axis():
    with pytest.raises(ValueError, match="at least one axis must remain"):
        gapjax.catavgmax_pool(jnp.ones((3, 4)), axis=(0, 1))


@pytest.mark.parametrize("case_id", ["gem", "lse", "lp", "mixed", "wildcat"])
def test_per_channel_parameters(case_id, rng):
    case = CASES[case_id]
    name = {"gem": "p", "lp": "p", "lse": "r", "mixed": "alpha", "wildcat": "alpha"}[case_id]
    per_channel = (
        np.array([0.5, 1.0, 3.0], np.float32)
        if name != "alpha"
        else np.array([0.0, 0.4, 1.0], np.float32)
    )
    x = distinct_values(rng, (2, 4, 5, 3))
    y = case.fn(x, **{**case.kwargs, name: per_channel})
    want = np_pool(x, (1, 2), case.ref, params={**case.params, name: per_channel})
    np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-6)
    # channels_first: the same per-channel vector applies to axis 1.
    y_cf = case.fn(
        np.moveaxis(x, -1, 1), data_format="channels_first", **{**case.kwargs, name: per_channel}
    )
    np.testing.assert_allclose(y_cf, want, rtol=2e-5, atol=2e-6)


def test_per_channel_weights_and_scores(rng):
    x = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    w = rng.uniform(0.1, 1.0, x.shape).astype(np.float32)
    np.testing.assert_allclose(
        gapjax.weighted_avg_pool(x, w),
        np_pool(x, (1, 2), ref_weighted, site_arrays=(w,)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        gapjax.attention_pool(x, w * 5),
        np_pool(x, (1, 2), ref_attention, site_arrays=(w * 5,)),
        rtol=1e-5,
    )


def test_per_channel_mask(rng):
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    m = rng.random(x.shape) < 0.5
    m[:, 0] = True
    np.testing.assert_allclose(
        gapjax.global_avg_pool(x, mask=m), np_pool(x, (1,), ref_avg, mask=m), rtol=1e-5
    )


# --------------------------------------------------------------------------------------------
# The contract, over the whole registry.
# --------------------------------------------------------------------------------------------


CONTRACT = [*REGISTRY, Case("catavgmax", gapjax.catavgmax_pool, ref_avg)]
CONTRACT_IDS = [c.id for c in CONTRACT]
CL2D, CF2D, AXIS = LAYOUTS[1], LAYOUTS[3], LAYOUTS[4]


@pytest.mark.parametrize("layout", [CL2D, CF2D, AXIS], ids=["cl2d", "cf2d", "axis"])
@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_shape_dtype_keepdims(case, layout, rng):
    x, site, _ = make_inputs(case, layout, rng)
    y = call(case, x, site, **layout.kwargs)
    yk = call(case, x, site, keepdims=True, **layout.kwargs)
    out = [d for i, d in enumerate(layout.shape) if i not in layout.axes]
    keep = [1 if i in layout.axes else d for i, d in enumerate(layout.shape)]
    if case.id == "catavgmax":
        cat = layout.channel_axis if layout.channel_axis is not None else 2
        keep[cat] *= 2
        out[[i for i in range(len(layout.shape)) if i not in layout.axes].index(cat)] *= 2
    assert y.shape == tuple(out)
    assert yk.shape == tuple(keep)
    np.testing.assert_array_equal(np.squeeze(yk, layout.axes), y)
    assert isinstance(y, jax.Array) and y.dtype == jnp.float32


@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_jit_equals_eager(case, rng):
    x, site, mask = make_inputs(case, CL2D, rng, masked=True)
    with jax.disable_jit():
        eager = call(case, x, site, mask=mask)
    jitted = jax.jit(lambda x, m, *s: call(case, x, s, mask=m))(x, mask, *site)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_vmap_of_unbatched_equals_batched(case, masked, rng):
    x, site, mask = make_inputs(case, CL2D, rng, masked=masked)
    batched = call(case, x, site, mask=mask)

    def one(xi, mi, *si):
        # An unbatched (height, width, channels) example, pooled over explicit axes.
        si = tuple(s[..., None] for s in si)
        return call(case, xi, si, axis=(0, 1), mask=None if mi is None else mi[..., None])

    mapped = jax.vmap(one)(x, mask, *site)
    np.testing.assert_allclose(mapped, batched, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_gradients_numerically(case, masked, rng):
    x, site, mask = make_inputs(case, LAYOUTS[0], rng, masked=masked)
    x = x.astype(np.float64) if jax.config.jax_enable_x64 else x

    def f(x, *s):
        return call(case, x, s, mask=mask)

    # Finite differences in float32 need a coarse step; the values are distinct (no ties).
    check_grads(f, (x, *site), order=1, modes=("rev", "fwd"), eps=1e-3, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_constant_map_pools_to_the_constant(case):
    if not case.mean_like:
        pytest.skip("not a mean-like pool")
    x = jnp.full((2, 3, 4, 5), 1.75)
    site = [jnp.linspace(0.5, 1.5, 24).reshape(2, 3, 4)] * case.site
    np.testing.assert_allclose(call(case, x, site), 1.75, rtol=1e-6)


@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_invariant_to_permuting_positions(case, rng):
    x, site, mask = make_inputs(case, CL2D, rng, masked=True)
    perm = rng.permutation(x.shape[1] * x.shape[2])

    def shuffle(a):
        flat = a.reshape(a.shape[0], -1, *a.shape[3:])
        return flat[:, perm].reshape(a.shape)

    y = call(case, x, site, mask=mask)
    y_perm = call(case, shuffle(x), [shuffle(s) for s in site], mask=shuffle(mask))
    np.testing.assert_allclose(y_perm, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_full_mask_equals_no_mask(case, rng):
    x, site, _ = make_inputs(case, CL2D, rng)
    full = np.ones(CL2D.site_shape, bool)
    np.testing.assert_allclose(
        call(case, x, site, mask=full), call(case, x, site), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        call(case, x, site, mask=full.astype(np.int32)), call(case, x, site), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_no_retracing_on_repeated_calls(case, rng):
    traces = []

    def f(x, m, *s):
        traces.append(None)
        return call(case, x, s, mask=m)

    jf = jax.jit(f)
    for _ in range(3):
        x, site, mask = make_inputs(case, CL2D, rng, masked=True)
        jf(x, mask, *site)
    assert len(traces) == 1
    # The library's own compiled function is cached too: new values, same shapes, one entry.
    cache = case.fn.jitted
    before = cache._cache_size()
    for _ in range(3):
        x, site, mask = make_inputs(case, CL2D, rng, masked=True)
        call(case, x, site, mask=mask, fill_value=float(rng.random()))
    assert cache._cache_size() - before <= 1


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_low_precision_inputs(case, dtype, rng):
    x, site, mask = make_inputs(case, CL2D, rng, masked=True)
    xl = jnp.asarray(x, dtype)
    y = call(case, xl, site, mask=mask)
    assert y.dtype == dtype
    # Same as pooling the (exactly representable) upcast values in float32, then rounding once.
    want = call(case, np.asarray(xl.astype(jnp.float32)), site, mask=mask).astype(dtype)
    np.testing.assert_allclose(
        np.asarray(y, np.float32), np.asarray(want, np.float32), rtol=1e-2, atol=1e-2
    )


@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_all_masked_row_gives_fill_value_and_finite_gradient(case, rng):
    x, site, _ = make_inputs(case, CL2D, rng)
    mask = np.ones(CL2D.site_shape, bool)
    mask[1] = False
    for fill in (0.0, -1.5):
        y = call(case, x, site, mask=mask, fill_value=fill)
        np.testing.assert_array_equal(y[1], fill)
        assert np.all(np.isfinite(y))
    grads = jax.grad(
        lambda x, *s: call(case, x, s, mask=mask).sum(), argnums=tuple(range(1 + case.site))
    )(x, *site)
    for g in grads:
        assert np.all(np.isfinite(g))
        np.testing.assert_array_equal(g[1], 0)


@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_nan_propagates_unless_masked(case, rng):
    x, site, _ = make_inputs(case, CL2D, rng)
    x[0, 1, 2, :] = np.nan
    mask = np.ones(CL2D.site_shape, bool)
    y = call(case, x, site)
    assert np.all(np.isnan(y[0])) and np.all(np.isfinite(y[1]))
    mask[0, 1, 2] = False
    ym = call(case, x, site, mask=mask)
    assert np.all(np.isfinite(ym))
    g = jax.grad(lambda x: call(case, x, site, mask=mask).sum())(x)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "fn",
    [
        gapjax.global_max_pool,
        gapjax.global_min_pool,
        gapjax.global_avg_pool,
        gapjax.mixed_pool,
        lambda x, **kw: gapjax.topk_pool(x, 3, **kw),
    ],
    ids=["max", "min", "avg", "mixed", "topk"],
)
def test_nan_propagates_on_large_maps(fn, data_format):
    # On CPU, jaxlib 0.10 hands large reductions to YNNPACK, whose reduce-max drops NaN:
    # jnp.max of this map finds no NaN at all. gapjax must still propagate it.
    x = np.ones((4, 32, 32, 64), np.float32)
    x[1, 5, 7, 3] = np.nan
    x[2, 31, 31, 63] = np.nan
    if data_format == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    y = np.asarray(fn(x, data_format=data_format))
    expected = np.zeros((4, 64), bool)
    expected[1, 3] = expected[2, 63] = True
    np.testing.assert_array_equal(np.isnan(y), expected)


@pytest.mark.parametrize("case", CONTRACT, ids=CONTRACT_IDS)
def test_integer_input(case, rng):
    x = rng.integers(0, 5, (2, 3, 4, 2)).astype(np.int32)
    x[..., 0, 0, :] = 1  # every row has a positive value (stochastic pooling)
    site = [np.ones((2, 3, 4), np.float32)] * case.site
    y = call(case, x, site)
    if case.keeps_int:
        assert jnp.issubdtype(y.dtype, jnp.integer)
    else:
        assert y.dtype == jnp.float32
    want = call(case, x.astype(np.float32), site)
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Identities of REFERENCE.md section 2.
# --------------------------------------------------------------------------------------------


def test_identities(rng):
    x = distinct_values(rng, (2, 4, 5, 3))
    gap = gapjax.global_avg_pool(x)
    gmp = gapjax.global_max_pool(x)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    close(gapjax.gem_pool(x, p=1.0), gap)
    close(gapjax.lse_pool(x, 1e-6), gap)  # LSE ~ mean + r var / 2
    close(gapjax.lse_pool(x, 1e7), gmp)  # max - log(n) / r
    close(gapjax.global_lp_pool(x, 1.0), gapjax.global_sum_pool(x))
    close(gapjax.topk_pool(x, 20), gap)
    close(gapjax.topk_pool(x, 1.0), gap)
    close(gapjax.topk_pool(x, 1), gmp)
    close(gapjax.mixed_pool(x, 1.0), gmp)
    close(gapjax.mixed_pool(x, 0.0), gap)
    close(gapjax.avgmax_pool(x), (gap + gmp) / 2)
    close(gapjax.weighted_avg_pool(x, np.ones((2, 4, 5))), gap)
    close(gapjax.attention_pool(x, np.zeros((2, 4, 5))), gap)
    close(gapjax.soft_pool(jnp.full((1, 3, 2), -4.0)), -4.0)
    # GeM tends to max as p grows; stochastic pooling's eval mode is sum a^2 / sum a.
    close(gapjax.gem_pool(x, p=200.0), gmp, rtol=2e-2)
    close(
        gapjax.global_stochastic_pool(x, train=False),
        np.sum(x**2, axis=(1, 2)) / np.sum(x, axis=(1, 2)),
    )


def test_lse_is_stable_for_large_inputs():
    x = jnp.array([[[1e4], [1e4 - 1.0]], [[-1e4], [-1e4]]])
    y = gapjax.lse_pool(x, 50.0)
    want = [1e4 + (np.logaddexp(0.0, -50.0) - np.log(2)) / 50, -1e4]
    np.testing.assert_allclose(y[:, 0], want, rtol=1e-7)
    assert np.all(np.isfinite(jax.grad(lambda x: gapjax.lse_pool(x, 50.0).sum())(x)))


def test_soft_pool_is_stable_and_ignores_minus_inf():
    x = jnp.array([[[1e4], [1e4 - np.log(3.0)], [-jnp.inf]]])
    np.testing.assert_allclose(gapjax.soft_pool(x), [[1e4 - np.log(3.0) / 4]], rtol=1e-7)


def test_power_means_do_not_overflow():
    # 20^40 and 1e4^10 overflow float32; the pooled values do not.
    x = jnp.array([[[20.0], [10.0]]])
    np.testing.assert_allclose(gapjax.gem_pool(x, p=40.0), [[20.0 * 0.5 ** (1 / 40)]], rtol=1e-6)
    np.testing.assert_allclose(
        gapjax.global_lp_pool(x * 500, 10.0), [[1e4 * (1 + 0.5**10) ** 0.1]], rtol=1e-6
    )
    g = jax.grad(lambda x: gapjax.gem_pool(x, p=40.0).sum())(x)
    assert np.all(np.isfinite(g)) and g[0, 0, 0] > 0.9


def test_gem_clamps_at_eps():
    x = jnp.array([[[-5.0], [0.0], [2.0]]])
    want = ((2 * 0.5**3 + 2.0**3) / 3) ** (1 / 3)
    np.testing.assert_allclose(gapjax.gem_pool(x, p=3.0, eps=0.5), [[want]], rtol=1e-6)


def test_lp_pool_follows_pytorch_for_signed_inputs():
    # PyTorch's LPPool raises the values themselves to the power: (sum x^p)^(1/p).
    x = jnp.array([[[-3.0], [4.0]]])
    np.testing.assert_allclose(gapjax.global_lp_pool(x, 2.0), [[5.0]])
    np.testing.assert_allclose(gapjax.global_lp_pool(x, 3.0), [[37.0 ** (1 / 3)]], rtol=1e-6)
    assert np.isnan(gapjax.global_lp_pool(jnp.array([[[-3.0], [2.0]]]), 3.0)[0, 0])
    g = jax.grad(lambda x: gapjax.global_lp_pool(x, 2.0).sum())(jnp.zeros((1, 3, 1)))
    np.testing.assert_array_equal(g, 0)


def test_low_precision_accumulates_in_float32():
    # float16 overflows at 65504: summing 4 x 40000 in float16 would give inf.
    x = jnp.full((1, 2, 2, 1), 40000.0, jnp.float16)
    np.testing.assert_array_equal(gapjax.global_avg_pool(x), 40000.0)
    np.testing.assert_array_equal(gapjax.gem_pool(x, p=1.0), 40000.0)
    np.testing.assert_array_equal(gapjax.soft_pool(x), 40000.0)
    # bfloat16 has 8 bits of mantissa: 256 + 1 + 1 + ... rounds away in bfloat16 accumulation.
    xb = jnp.concatenate([jnp.full((1, 1, 1), 256.0), jnp.ones((1, 255, 1))], 1).astype(
        jnp.bfloat16
    )
    assert float(gapjax.global_sum_pool(xb)[0, 0]) == 512.0
    assert gapjax.global_sum_pool(xb).dtype == jnp.bfloat16


# --------------------------------------------------------------------------------------------
# Top-k (WILDCAT) conventions.
# --------------------------------------------------------------------------------------------


def test_topk_counts_fractions_and_halving():
    x = jnp.array([[[1.0], [5.0], [2.0], [4.0], [3.0]]])  # sorted: 5 4 3 2 1
    assert float(gapjax.topk_pool(x, 2)[0, 0]) == 4.5
    assert float(gapjax.topk_pool(x, 0.5)[0, 0]) == 4.5  # round(2.5) = 2, half to even
    assert float(gapjax.topk_pool(x, 0.7)[0, 0]) == 3.5  # round(3.5) = 4: (5+4+3+2)/4
    assert float(gapjax.topk_pool(x, 2, k_min=1, alpha=1.0)[0, 0]) == 4.5 + 1.0
    assert float(gapjax.topk_pool(x, 2, k_min=1, alpha=1.0, halve=True)[0, 0]) == 2.75
    # The official code halves only when k_min > 0 and alpha != 0.
    assert float(gapjax.topk_pool(x, 2, k_min=1, alpha=0.0, halve=True)[0, 0]) == 4.5
    assert float(gapjax.topk_pool(x, 2, k_min=0.05, halve=True)[0, 0]) == 4.5  # rounds to 0
    assert float(gapjax.topk_pool(x, 0.01)[0, 0]) == 5.0  # at least one


def test_topk_with_mask_uses_per_row_counts():
    x = jnp.array([[[1.0], [5.0], [2.0], [4.0]], [[1.0], [5.0], [2.0], [4.0]]])
    mask = jnp.array([[True, False, True, True], [True, True, True, True]])
    # Row 0 pools {1, 2, 4}: round(0.5 * 3) = 2 values, (4 + 2) / 2.
    np.testing.assert_allclose(gapjax.topk_pool(x, 0.5, mask=mask)[:, 0], [3.0, 4.5])
    # A count larger than a row's valid positions averages all of them.
    np.testing.assert_allclose(gapjax.topk_pool(x, 4, mask=mask)[:, 0], [7 / 3, 3.0])
    # Masked and unmasked paths agree where every position is valid, fractions included.
    for k in (0.1, 0.3, 0.5, 0.7, 1.0):
        np.testing.assert_allclose(
            gapjax.topk_pool(x, k, k_min=k / 2, alpha=0.5, mask=jnp.ones((2, 4), bool)),
            gapjax.topk_pool(x, k, k_min=k / 2, alpha=0.5),
        )


# --------------------------------------------------------------------------------------------
# Stochastic pooling.
# --------------------------------------------------------------------------------------------


def test_stochastic_train_sampling_frequencies():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    n = 20000
    x = jnp.broadcast_to(jnp.asarray(probs * 8, jnp.float32)[None, :, None], (n, 4, 1))
    y = np.asarray(gapjax.global_stochastic_pool(x, key=jax.random.key(1), train=True))[:, 0]
    counts = np.array([(np.isclose(y, v)).sum() for v in probs * 8])
    assert counts.sum() == n
    # Chi-square with 3 degrees of freedom: 16.27 is the 0.999 quantile.
    chi2 = np.sum((counts - n * probs) ** 2 / (n * probs))
    assert chi2 < 16.27, (counts, chi2)


def test_stochastic_train_ignores_negatives_masked_and_zero_rows():
    x = jnp.array([[[-5.0], [0.0], [2.0], [7.0]], [[0.0], [-1.0], [0.0], [0.0]]])
    mask = jnp.array([[True, True, True, False], [True, True, True, True]])
    for seed in range(20):
        y = gapjax.global_stochastic_pool(x, key=jax.random.key(seed), train=True, mask=mask)
        np.testing.assert_array_equal(y[:, 0], [2.0, 0.0])


def test_stochastic_train_gradient_goes_to_the_sampled_position():
    x = jnp.asarray(np.arange(1.0, 13.0, dtype=np.float32).reshape(1, 12, 1))
    key = jax.random.key(3)
    y = gapjax.global_stochastic_pool(x, key=key, train=True)
    g = jax.grad(lambda x: gapjax.global_stochastic_pool(x, key=key, train=True).sum())(x)
    assert g.sum() == 1.0 and g.max() == 1.0
    assert x[g == 1.0][0] == y[0, 0]


def test_stochastic_train_is_deterministic_given_the_key_and_jit_equals_eager(rng):
    x = distinct_values(rng, (3, 4, 5, 2))
    key = jax.random.key(7)
    a = gapjax.global_stochastic_pool(x, key=key, train=True)
    with jax.disable_jit():
        b = gapjax.global_stochastic_pool(x, key=key, train=True)
    np.testing.assert_array_equal(a, b)
    c = gapjax.global_stochastic_pool(x, key=jax.random.key(8), train=True)
    assert not np.array_equal(a, c)
    # Every output is one of its inputs.
    s = sites(x, (1, 2))
    assert np.all(np.any(s == np.asarray(a)[..., None], axis=-1))
    # Legacy uint32 keys work too.
    gapjax.global_stochastic_pool(x, key=jax.random.PRNGKey(0), train=True)


# --------------------------------------------------------------------------------------------
# Errors: ValueError at trace time, naming the argument and the shapes.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call_", "match"),
    [
        (lambda: gapjax.global_avg_pool(jnp.ones((4, 5))), r"rank 3, 4 or 5.*\(4, 5\)"),
        (lambda: gapjax.global_avg_pool(jnp.ones((1, 2, 3, 4, 5, 6))), r"rank 3, 4 or 5"),
        (
            lambda: gapjax.global_avg_pool(jnp.ones((2, 3, 4)), data_format="NHWC"),
            r"data_format must be one of",
        ),
        (lambda: gapjax.global_avg_pool(jnp.ones((2, 3, 4)), axis=3), r"axis 3 is out of range"),
        (lambda: gapjax.global_avg_pool(jnp.ones((2, 3, 4)), axis=(1, -2)), r"repeated axes"),
        (lambda: gapjax.global_avg_pool(jnp.ones((2, 3, 4)), axis=()), r"at least one axis"),
        (lambda: gapjax.global_avg_pool(jnp.ones((2, 0, 4))), r"no positions to pool"),
        (lambda: gapjax.global_avg_pool(jnp.ones((2, 3, 4), jnp.complex64)), r"real"),
        (
            lambda: gapjax.global_avg_pool(jnp.ones((2, 3, 4)), mask=jnp.ones((2, 4))),
            r"mask of shape \(2, 4\) does not broadcast to \(batch, \*spatial\) = \(2, 3\)",
        ),
        (
            lambda: gapjax.global_avg_pool(jnp.ones((2, 3, 4)), mask=jnp.ones((2, 3, 5))),
            r"mask of shape \(2, 3, 5\) does not broadcast to x's shape \(2, 3, 4\)",
        ),
        (
            lambda: gapjax.global_max_pool(jnp.ones((2, 3, 4)), axis=1, mask=jnp.ones((2, 3))),
            r"mask of shape \(2, 3\) does not broadcast to x's shape \(2, 3, 4\)",
        ),
        (lambda: gapjax.gem_pool(jnp.ones((2, 3, 4)), p=0.0), r"gem_pool: p must be > 0"),
        (
            lambda: gapjax.gem_pool(jnp.ones((2, 3, 4)), p=np.array([1.0, -1.0, 1.0, 1.0])),
            r"p must be > 0",
        ),
        (
            lambda: gapjax.gem_pool(jnp.ones((2, 3, 4)), p=jnp.ones(3)),
            r"p of shape \(3,\) must be a scalar or broadcast to the pooled output's shape "
            r"\(2, 4\)",
        ),
        (lambda: gapjax.gem_pool(jnp.ones((2, 3, 4)), eps=0.0), r"eps must be > 0"),
        (lambda: gapjax.global_lp_pool(jnp.ones((2, 3, 4)), -2.0), r"p must be > 0"),
        (lambda: gapjax.lse_pool(jnp.ones((2, 3, 4)), 0.0), r"r must be > 0"),
        (lambda: gapjax.mixed_pool(jnp.ones((2, 3, 4)), 1.5), r"alpha must lie in \[0, 1\]"),
        (lambda: gapjax.topk_pool(jnp.ones((2, 3, 4)), 0), r"k=0 is out of range.*\[1, 3\]"),
        (lambda: gapjax.topk_pool(jnp.ones((2, 3, 4)), 4), r"k=4 is out of range"),
        (lambda: gapjax.topk_pool(jnp.ones((2, 3, 4)), 1.5), r"k=1.5 .* fraction"),
        (lambda: gapjax.topk_pool(jnp.ones((2, 3, 4)), 0.0), r"k=0.0 is out of range"),
        (lambda: gapjax.topk_pool(jnp.ones((2, 3, 4)), 2, k_min=5), r"k_min=5 is out of range"),
        (lambda: gapjax.topk_pool(jnp.ones((2, 3, 4)), True), r"k must be an int"),
        (lambda: gapjax.topk_pool(jnp.ones((2, 3, 4)), 2, alpha=np.nan), r"alpha must be finite"),
        (
            lambda: gapjax.weighted_avg_pool(jnp.ones((2, 3, 4)), jnp.ones((2, 4))),
            r"weights of shape \(2, 4\) does not broadcast to \(batch, \*spatial\) = \(2, 3\)",
        ),
        (
            lambda: gapjax.attention_pool(jnp.ones((2, 3, 4)), jnp.ones((3, 3, 4))),
            r"scores of shape \(3, 3, 4\) does not broadcast to x's shape \(2, 3, 4\)",
        ),
        (
            lambda: gapjax.global_stochastic_pool(jnp.ones((2, 3, 4)), train=True),
            r"train=True .* needs key",
        ),
        (
            lambda: gapjax.global_stochastic_pool(jnp.ones((2, 3, 4)), train=1),
            r"train must be a bool",
        ),
    ],
)
def test_errors(call_, match):
    with pytest.raises(ValueError, match=match):
        call_()


def test_errors_raise_inside_a_users_jit():
    f = jax.jit(lambda x: gapjax.global_avg_pool(x, mask=jnp.ones((2, 4))))
    with pytest.raises(ValueError, match="mask of shape"):
        f(jnp.ones((2, 3, 4)))
    # Traced hyperparameters cannot be range-checked, but shapes still are.
    g = jax.jit(lambda x, p: gapjax.gem_pool(x, p))
    with pytest.raises(ValueError, match="p of shape"):
        g(jnp.ones((2, 3, 4)), jnp.ones(3))


def test_axis_accepts_lists_and_negative_axes(rng):
    x = rng.normal(size=(3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(gapjax.global_avg_pool(x, axis=[0, -1]), x.mean((0, 2)), rtol=1e-6)
    np.testing.assert_allclose(gapjax.global_max_pool(x, axis=-2), x.max(1))


# --------------------------------------------------------------------------------------------
# Hostile input (issue 20): extreme parameters, padded batches, non-0/1 masks, bad settings.
# --------------------------------------------------------------------------------------------

X3 = np.array([[[1.0], [2.0], [3.0], [0.5]]], np.float32)  # (batch, length, channels)


@pytest.mark.parametrize("p", [1e-10, 1e-3, 0.5, 3.0, 50.0, 1e10, 1e30])
def test_gem_extreme_p_matches_the_float64_limit(p):
    v = X3[0, :, 0].astype(np.float64)
    # log-domain float64 reference: (1/p) log mean exp(p log v)
    z = np.log(v / v.max())
    want = v.max() * np.exp(np.log(np.mean(np.exp(p * z))) / p if p > 1e-6 else np.mean(z))
    np.testing.assert_allclose(gapjax.gem_pool(X3, p), [[want]], rtol=1e-5)
    g = jax.grad(lambda v, q: gapjax.gem_pool(v, q).sum(), argnums=(0, 1))(X3, p)
    assert all(np.isfinite(np.asarray(a)).all() for a in g)


@pytest.mark.parametrize("p", [1e-10, 0.5, 3.0, 1e10])
def test_global_lp_extreme_p(p):
    one = np.array([[[0.0], [2.5], [0.0]]], np.float32)  # one nonzero: the value itself
    np.testing.assert_allclose(gapjax.global_lp_pool(one, p), [[2.5]], rtol=1e-5)
    if p >= 1:
        want = np.sum(X3.astype(np.float64) ** p) ** (1 / p) if p < 100 else 3.0
        np.testing.assert_allclose(gapjax.global_lp_pool(X3, p), [[want]], rtol=1e-5)


@pytest.mark.parametrize("r", [1e-45, 1e-40, 1e-30, 1e-3, 1.0, 1e30])
def test_lse_tiny_subnormal_and_huge_r(r):
    v = X3[0, :, 0].astype(np.float64)
    want = v.mean() if r < 1e-20 else v.max() if r > 1e20 else ref_lse(v, r)
    y = gapjax.lse_pool(X3, r)
    np.testing.assert_allclose(y, [[want]], rtol=1e-5)
    g = jax.grad(lambda v: gapjax.lse_pool(v, r).sum())(X3)
    assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize(
    "fn,arg", [(gapjax.gem_pool, "p"), (gapjax.global_lp_pool, "p"), (gapjax.lse_pool, "r")]
)
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, 0.0, -1.0])
def test_power_and_sharpness_must_be_finite_and_positive(fn, arg, value):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: {arg} must be > 0 and finite"):
        fn(X3, value)


def test_lp_p_half_has_a_finite_gradient_at_zero():
    zero = jnp.zeros((1, 2, 2, 1))
    g = jax.grad(lambda v: gapjax.global_lp_pool(v, 0.5).sum())(zero)
    np.testing.assert_array_equal(g, np.zeros_like(g))
    # Away from zero the gradient is unchanged: d/dx (sum x^p)^(1/p) at x = (4, 0, 0, 0) is 1.
    x = zero.at[0, 0, 0, 0].set(4.0)
    g = jax.grad(lambda v: gapjax.global_lp_pool(v, 0.5).sum())(x)
    np.testing.assert_allclose(np.asarray(g).ravel(), [1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("fn", [gapjax.mixed_pool, gapjax.avgmax_pool, gapjax.catavgmax_pool])
def test_mixing_gradients_finite_on_a_padded_batch(fn):
    x = jnp.asarray(np.arange(12.0, dtype=np.float32).reshape(2, 3, 2))
    mask = np.array([[True, False, True], [False, False, False]])  # example 1 all masked
    args = (0.5,) if fn is gapjax.mixed_pool else ()
    grads = jax.grad(
        lambda x, *a: fn(x, *a, mask=mask).sum(), argnums=(0, *range(1, 1 + len(args)))
    )(x, *args)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    if fn is gapjax.mixed_pool:  # d/d alpha = sum(max - mean) over the valid example
        np.testing.assert_allclose(grads[1], (4 - 2) + (5 - 3))


@pytest.mark.parametrize("bad", [0.5, 2.0, np.nan, -1.0])
def test_masks_other_than_0_1_are_refused(bad):
    mask = np.ones((1, 4), np.float32)
    mask[0, 1] = bad
    with pytest.raises(ValueError, match=r"global_avg_pool: mask must hold only booleans or 0/1"):
        gapjax.global_avg_pool(X3, mask=mask)
    # 0/1 numbers are fine, and a traced mask is read as mask != 0.
    ok = np.array([[1, 0, 1, 1]], np.float32)
    np.testing.assert_allclose(gapjax.global_avg_pool(X3, mask=ok), [[1.5]])
    traced = jax.jit(lambda m: gapjax.global_avg_pool(X3, mask=m))(ok)
    np.testing.assert_allclose(traced, [[1.5]])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"axis": 1.0}, r"global_avg_pool: axis must be an int or a tuple of ints"),
        ({"axis": (1.0,)}, r"global_avg_pool: axis must be an int or a tuple of ints"),
        ({"axis": True}, r"global_avg_pool: axis must be an int or a tuple of ints"),
        ({"axis": jnp.array(1)}, r"global_avg_pool: axis is a static setting"),
        ({"axis": np.array([1])}, r"global_avg_pool: axis is a static setting"),
        ({"keepdims": "no"}, r"global_avg_pool: keepdims must be a bool"),
        ({"keepdims": 1}, r"global_avg_pool: keepdims must be a bool"),
    ],
)
def test_static_settings_of_the_wrong_type_name_function_and_argument(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match) as info:
        gapjax.global_avg_pool(X3, **kwargs)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_numpy_scalars_are_accepted_as_static_settings():
    want = gapjax.global_avg_pool(X3, axis=1, keepdims=True)
    np.testing.assert_array_equal(
        gapjax.global_avg_pool(X3, axis=np.int64(1), keepdims=np.bool_(True)), want
    )
    np.testing.assert_array_equal(
        gapjax.topk_pool(X3, np.int32(2), halve=np.bool_(False)), gapjax.topk_pool(X3, 2)
    )
    with pytest.raises(ValueError, match="topk_pool: halve must be a bool"):
        gapjax.topk_pool(X3, 2, halve="no")
