"""gapjax.nn.linen: Linen global pooling layers equal the functions and their NNX siblings."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gapjax
from gapjax import nn
from gapjax.nn import linen as gl

RNG = np.random.default_rng(1)
X = RNG.normal(size=(2, 4, 5, 3)).astype(np.float32)
XPOS = np.abs(X) + 0.1
MASK = RNG.random((2, 4, 5)) > 0.3
KEY = jax.random.key(0)

FIXED = [
    (gl.GlobalAvgPool(), gapjax.global_avg_pool, {}),
    (
        gl.GlobalSumPool(data_format="channels_first"),
        gapjax.global_sum_pool,
        {"data_format": "channels_first"},
    ),
    (gl.GlobalMaxPool(keepdims=True), gapjax.global_max_pool, {"keepdims": True}),
    (gl.GlobalMinPool(axis=(1,)), gapjax.global_min_pool, {"axis": (1,)}),
    (gl.GlobalLPPool(p=3.0), gapjax.global_lp_pool, {"p": 3.0}),
    (gl.AvgMaxPool(), gapjax.avgmax_pool, {}),
    (gl.CatAvgMaxPool(), gapjax.catavgmax_pool, {}),
    (gl.SoftPool(fill_value=-1.0), gapjax.soft_pool, {"fill_value": -1.0}),
    (gl.TopKPool(k=3, k_min=2, alpha=0.5), gapjax.topk_pool, {"k": 3, "k_min": 2, "alpha": 0.5}),
]


@pytest.mark.parametrize(("module", "fn", "kwargs"), FIXED, ids=lambda v: type(v).__name__)
def test_fixed_linen_module_equals_function(module, fn, kwargs):
    mask = None if kwargs.get("data_format") or kwargs.get("axis") else MASK
    got = module.apply({}, X, mask=mask)
    np.testing.assert_array_equal(got, fn(X, mask=mask, **kwargs))


def test_every_global_function_has_a_linen_layer():
    wrapped = {
        getattr(gl, n).function.__name__ for n in gl.__all__ if hasattr(getattr(gl, n), "function")
    }
    learnable = {
        "gem_pool",
        "lse_pool",
        "mixed_pool",
        "weighted_avg_pool",
        "global_stochastic_pool",
    }
    learnable |= {"attention_pool"}  # NNX only: learned queries (gapjax.nn.AttentionPool)
    missing = set(gapjax.pooling.global_pool.__all__) - wrapped - learnable
    assert not missing


def test_weighted_avg_pool_linen():
    w = XPOS[..., 0]
    np.testing.assert_array_equal(
        gl.WeightedAvgPool().apply({}, X, w), gapjax.weighted_avg_pool(X, w)
    )


@pytest.mark.parametrize(
    ("module", "name", "init", "fn"),
    [
        (gl.GeMPool(channels=3), "p", 3.0, lambda x, v: gapjax.gem_pool(x, v)),
        (gl.LSEPool(r_init=2.0), "r", 2.0, lambda x, v: gapjax.lse_pool(x, v)),
        (
            gl.MixedPool(channels=3, alpha_init=0.2),
            "alpha",
            0.2,
            lambda x, v: gapjax.mixed_pool(x, v),
        ),
    ],
    ids=["gem", "lse", "mixed"],
)
def test_learnable_linen_params(module, name, init, fn):
    variables = module.init(KEY, XPOS)
    value = variables["params"][name]
    np.testing.assert_allclose(value, init)
    np.testing.assert_allclose(module.apply(variables, XPOS), fn(XPOS, value), rtol=1e-6)
    grads = jax.grad(lambda v: jnp.sum(module.apply(v, XPOS) ** 2))(variables)
    assert np.all(np.asarray(grads["params"][name]) != 0)


def test_fixed_linen_hyperparameter_has_no_params():
    module = gl.GeMPool(p_init=2.0, learnable=False)
    assert module.init(KEY, XPOS) == {}
    np.testing.assert_allclose(module.apply({}, XPOS), gapjax.gem_pool(XPOS, 2.0))


@pytest.mark.parametrize("transform", ["softplus", "exp"])
@pytest.mark.parametrize("class_specific", [False, True])
def test_linen_gwap_matches_nnx_gwap(transform, class_specific):
    """Same weights, same result: the two APIs share one implementation of the math."""
    module = gl.GWAP(class_specific=class_specific, transform=transform)
    variables = module.init(KEY, X)
    nnx_pool = nn.GWAP(3, class_specific=class_specific, transform=transform, rngs=nnx.Rngs(0))
    nnx_pool.score.kernel[...] = variables["params"]["score"]["kernel"]
    nnx_pool.score.bias[...] = variables["params"]["score"]["bias"]
    np.testing.assert_allclose(
        module.apply(variables, X, mask=MASK), nnx_pool(X, mask=MASK), rtol=1e-6
    )


def test_linen_stochastic_pool():
    a = np.maximum(X, 0)
    eval_out = gl.GlobalStochasticPool(deterministic=True).apply({}, X)
    np.testing.assert_allclose(eval_out, np.sum(a * a, (1, 2)) / np.sum(a, (1, 2)), rtol=1e-6)
    pool = gl.GlobalStochasticPool(deterministic=False)
    draw = lambda seed: np.asarray(pool.apply({}, X, rngs={"dropout": jax.random.key(seed)}))  # noqa: E731
    # Each output is one of its channel's values; the same key gives the same draw.
    out = draw(3)
    assert all(np.any(X[b, ..., c] == out[b, c]) for b in range(2) for c in range(3))
    np.testing.assert_array_equal(out, draw(3))
    assert not all(np.array_equal(out, draw(s)) for s in (4, 5, 6))
    with pytest.raises(ValueError, match="deterministic"):
        gl.GlobalStochasticPool().apply({}, X)


def test_linen_masked_nan_and_padded_rows_leak_into_no_gradient():
    x = np.array(XPOS)
    x[:, 0, 0, :] = np.nan
    mask = np.ones((2, 4, 5), bool)
    mask[:, 0, 0] = False
    mask[1] = False  # a padded example
    for module in (gl.GWAP(), gl.GWAP(class_specific=True, transform="exp"), gl.MixedPool()):
        variables = module.init(KEY, x, mask=mask)
        y = module.apply(variables, x, mask=mask)
        assert np.isfinite(np.asarray(y)).all()
        grads = jax.grad(lambda v, m=module: jnp.sum(m.apply(v, x, mask=mask)))(variables)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: gl.GlobalAvgPool(keepdims="no"), "GlobalAvgPool.*keepdims"),
        (lambda: gl.TopKPool(k=2, halve="no"), "TopKPool.*halve"),
        (lambda: gl.GlobalLPPool(p=float("inf")), "GlobalLPPool: global_lp_pool: p must be > 0"),
        (lambda: gl.GeMPool(p_init=0.0), "GeMPool: gem_pool: p must be > 0"),
        (lambda: gl.GeMPool(channels=0), "GeMPool: channels must be a positive int"),
        (lambda: gl.LSEPool(r_init=float("nan")), "LSEPool: lse_pool: r must be > 0"),
        (lambda: gl.MixedPool(alpha_init=2.0), r"MixedPool: mixed_pool: alpha must lie"),
        (lambda: gl.GWAP(class_specific="no"), "GWAP.*class_specific"),
        (lambda: gl.GWAP(transform="tanh"), "transform must be one of"),
        (
            lambda: gl.GlobalStochasticPool(deterministic="no"),
            "GlobalStochasticPool.*deterministic",
        ),
    ],
)
def test_linen_impossible_settings_fail_when_built(build, match):
    # The message names the module (or function) and the argument; under the test suite's
    # runtime type checker a wrongly typed argument may be caught by the annotation first.
    with pytest.raises((ValueError, TypeError)) as info:
        build()
    assert re.search(match, str(info.value), re.S), str(info.value)
