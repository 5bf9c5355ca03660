"""gapjax.nn pooling modules: each equals its function, learnable ones against NumPy references."""

import inspect
import re

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gapjax
from gapjax import nn, pooling

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 5, 4, 3)).astype(np.float32)
XPOS = np.abs(X) + 0.1
MASK = RNG.random((2, 5, 4)) > 0.3

# --------------------------------------------------------------------------------------------
# Fixed pools: module(settings)(x) == function(x, settings), for every pooling function.
# --------------------------------------------------------------------------------------------

# name -> (module, call args, function call)
FIXED = {
    "global_avg_pool": (
        nn.GlobalAvgPool(keepdims=True),
        (X,),
        lambda: gapjax.global_avg_pool(X, keepdims=True),
    ),
    "global_sum_pool": (nn.GlobalSumPool(), (X,), lambda: gapjax.global_sum_pool(X)),
    "global_max_pool": (nn.GlobalMaxPool(), (X,), lambda: gapjax.global_max_pool(X)),
    "global_min_pool": (nn.GlobalMinPool(), (X,), lambda: gapjax.global_min_pool(X)),
    "global_lp_pool": (nn.GlobalLPPool(3.0), (X,), lambda: gapjax.global_lp_pool(X, 3.0)),
    "avgmax_pool": (nn.AvgMaxPool(), (X,), lambda: gapjax.avgmax_pool(X)),
    "catavgmax_pool": (nn.CatAvgMaxPool(), (X,), lambda: gapjax.catavgmax_pool(X)),
    "soft_pool": (nn.SoftPool(), (X,), lambda: gapjax.soft_pool(X)),
    "topk_pool": (
        nn.TopKPool(0.5, k_min=2, alpha=0.7, halve=True),
        (X,),
        lambda: gapjax.topk_pool(X, 0.5, k_min=2, alpha=0.7, halve=True),
    ),
    "weighted_avg_pool": (
        nn.WeightedAvgPool(),
        (X, XPOS[..., 0]),
        lambda: gapjax.weighted_avg_pool(X, XPOS[..., 0]),
    ),
    "avg_pool": (
        nn.AvgPool(3, stride=2, padding=1, count_include_pad=False),
        (X,),
        lambda: gapjax.avg_pool(X, 3, stride=2, padding=1, count_include_pad=False),
    ),
    "max_pool": (
        nn.MaxPool(3, stride=2, convention="caffe"),
        (X,),
        lambda: gapjax.max_pool(X, 3, stride=2, convention="caffe"),
    ),
    "min_pool": (nn.MinPool([2, 2]), (X,), lambda: gapjax.min_pool(X, (2, 2))),
    "lp_pool": (
        nn.LPPool(2.0, 2, ceil_mode=True),
        (X,),
        lambda: gapjax.lp_pool(X, 2.0, 2, ceil_mode=True),
    ),
    "adaptive_avg_pool": (
        nn.AdaptiveAvgPool((3, 3)),
        (X,),
        lambda: gapjax.adaptive_avg_pool(X, (3, 3)),
    ),
    "adaptive_max_pool": (
        nn.AdaptiveMaxPool(2, return_indices=True),
        (X,),
        lambda: gapjax.adaptive_max_pool(X, 2, return_indices=True),
    ),
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_module_equals_function(name):
    module, args, expected = FIXED[name]
    got, want = module(*args), expected()
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_every_pooling_function_has_a_module():
    covered = {
        cls.function.__name__
        for cls in (getattr(nn, n) for n in nn.__all__)
        if inspect.isclass(cls) and hasattr(cls, "function")
    }
    learnable = {"gem_pool", "lse_pool", "mixed_pool", "attention_pool"}  # tested below
    missing = set(pooling.__all__) - covered - learnable
    assert not missing, f"no module wraps {sorted(missing)}"


def test_mask_is_passed_through():
    got = nn.GlobalAvgPool()(X, mask=MASK)
    np.testing.assert_array_equal(got, gapjax.global_avg_pool(X, mask=MASK))
    assert not np.allclose(got, gapjax.global_avg_pool(X))


def test_max_unpool_module_round_trip():
    y, idx = nn.MaxPool(2, return_indices=True)(X)
    np.testing.assert_array_equal(nn.MaxUnpool(2)(y, idx), gapjax.max_unpool(y, idx, 2))


def test_settings_are_validated_when_the_module_is_built():
    with pytest.raises(ValueError, match="p must be > 0"):
        nn.GlobalLPPool(-1.0)
    with pytest.raises(TypeError, match="unknown argument"):
        nn.GlobalAvgPool(window=3)
    with pytest.raises(TypeError, match="missing required setting"):
        nn.MaxPool(stride=2)
    with pytest.raises(TypeError, match="given when the module is called"):
        nn.GlobalAvgPool(mask=MASK)
    with pytest.raises(TypeError, match="at most 1 positional"):
        nn.MaxPool(3, 2)
    with pytest.raises(ValueError, match="k_min"):
        nn.TopKPool(2, k_min=-1)(X)


def test_array_setting_is_data_not_static():
    p = jnp.array([1.0, 2.0, 3.0])
    module = nn.GlobalLPPool(p)
    np.testing.assert_allclose(module(XPOS), gapjax.global_lp_pool(XPOS, p))
    _graphdef, state = nnx.split(module)
    np.testing.assert_array_equal(jax.tree.leaves(state)[0], p)


# --------------------------------------------------------------------------------------------
# Learnable pools.
# --------------------------------------------------------------------------------------------


def _np_mean_pow(x, p):
    return np.mean(np.maximum(x, 1e-6) ** p, axis=(1, 2)) ** (1 / p)


def test_gem_module_parameter_and_reference():
    pool = nn.GeMPool(channels=3)
    np.testing.assert_array_equal(pool.p[...], [3.0, 3.0, 3.0])
    np.testing.assert_allclose(pool(XPOS), _np_mean_pow(XPOS, 3.0), rtol=1e-5)
    assert nn.GeMPool().p.shape == ()
    fixed = nn.GeMPool(2.0, learnable=False)
    assert not jax.tree.leaves(nnx.state(fixed, nnx.Param))
    np.testing.assert_allclose(fixed(XPOS), _np_mean_pow(XPOS, 2.0), rtol=1e-5)
    with pytest.raises(ValueError, match="p must be > 0"):
        nn.GeMPool(0.0)


def _param_grads(module, x, **kw):
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x, **kw) ** 2)

    return jax.grad(loss)(params)


@pytest.mark.parametrize(
    "module",
    [
        nn.GeMPool(channels=3),
        nn.LSEPool(2.0, channels=3),
        nn.MixedPool(0.3, channels=3),
        nn.GatedMixedPool(
            (5, 4), channels=3, gate_init=nnx.initializers.normal(0.1), rngs=nnx.Rngs(0)
        ),
        nn.GWAP(3, class_specific=True, rngs=nnx.Rngs(0)),
        nn.AttentionPool(3, num_heads=1, rngs=nnx.Rngs(0)),
    ],
    ids=type,
)
def test_learnable_parameters_receive_gradients(module):
    grads = _param_grads(module, XPOS, mask=MASK)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
    assert all(np.any(np.asarray(g) != 0) for g in leaves), grads


def test_lse_module_reference():
    r = 2.0
    want = np.log(np.mean(np.exp(r * X), axis=(1, 2))) / r
    np.testing.assert_allclose(nn.LSEPool(r)(X), want, rtol=1e-5, atol=1e-6)


def test_mixed_module_clips_alpha():
    pool = nn.MixedPool(0.5)
    pool.alpha[...] = jnp.array(1.7)  # a step outside [0, 1] behaves as 1: max pooling
    np.testing.assert_allclose(pool(X), X.max(axis=(1, 2)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        nn.MixedPool(1.5)


def test_gated_mixed_pool_reference_and_mask():
    w = RNG.normal(size=(5, 4, 3)).astype(np.float32)
    pool = nn.GatedMixedPool((5, 4), channels=3, rngs=nnx.Rngs(0))
    pool.gate[...] = jnp.asarray(w)
    m = MASK[..., None]
    alpha = 1 / (1 + np.exp(-np.sum(np.where(m, w * X, 0), axis=(1, 2))))
    mx = np.max(np.where(m, X, -np.inf), axis=(1, 2))
    mean = np.sum(np.where(m, X, 0), axis=(1, 2)) / np.sum(m, axis=(1, 2))
    np.testing.assert_allclose(pool(X, mask=MASK), alpha * mx + (1 - alpha) * mean, rtol=1e-5)
    with pytest.raises(ValueError, match="spatial shape"):
        pool(np.zeros((2, 4, 4, 3), np.float32))


def _np_gwap(x, w, transform):
    s = x @ w["kernel"] + w["bias"]  # (batch, h, w, out)
    weights = {"softplus": np.log1p(np.exp(s)), "sigmoid": 1 / (1 + np.exp(-s)), "exp": np.exp(s)}[
        transform
    ]
    return np.sum(weights * x, axis=(1, 2)) / np.sum(weights, axis=(1, 2))


@pytest.mark.parametrize("transform", ["softplus", "sigmoid", "exp"])
@pytest.mark.parametrize("class_specific", [False, True])
def test_gwap_reference(transform, class_specific):
    pool = nn.GWAP(3, class_specific=class_specific, transform=transform, rngs=nnx.Rngs(1))
    w = {"kernel": np.asarray(pool.score.kernel[...]), "bias": np.asarray(pool.score.bias[...])}
    np.testing.assert_allclose(pool(X), _np_gwap(X, w, transform), rtol=2e-5, atol=1e-6)
    expected_map = (2, 5, 4, 3) if class_specific else (2, 5, 4)
    assert pool.weight_map(X).shape == expected_map
    assert np.all(np.asarray(pool.weight_map(X)) >= 0)


def test_gwap_channels_first_matches_channels_last():
    last = nn.GWAP(3, class_specific=True, rngs=nnx.Rngs(2))
    first = nn.GWAP(3, class_specific=True, data_format="channels_first", rngs=nnx.Rngs(2))
    xf = np.moveaxis(X, -1, 1)
    np.testing.assert_allclose(first(xf), last(X), rtol=1e-6)
    np.testing.assert_allclose(first.weight_map(xf), np.moveaxis(last.weight_map(X), -1, 1))
    with pytest.raises(ValueError, match="transform must be one of"):
        nn.GWAP(3, transform="square", rngs=nnx.Rngs(0))


def test_attention_pool_reference_multihead_with_mask():
    heads, d = 2, 4
    pool = nn.AttentionPool(
        3, num_heads=heads, qkv_features=heads * d, out_features=5, rngs=nnx.Rngs(3)
    )
    get = lambda lin: (np.asarray(lin.kernel[...]), np.asarray(lin.bias[...]))  # noqa: E731
    (wk, bk), (wv, bv), (wo, bo) = get(pool.key), get(pool.value), get(pool.out)
    q = np.asarray(pool.query[...])
    k = (X @ wk + bk).reshape(2, 5, 4, heads, d)
    v = (X @ wv + bv).reshape(2, 5, 4, heads, d)
    s = np.einsum("bhwnd,nd->bhwn", k, q) / np.sqrt(d)
    s = np.where(MASK[..., None], s, -np.inf)
    a = np.exp(s - s.max(axis=(1, 2), keepdims=True))
    a = a / a.sum(axis=(1, 2), keepdims=True)
    pooled = np.einsum("bhwn,bhwnd->bnd", a, v).reshape(2, heads * d)
    np.testing.assert_allclose(pool(X, mask=MASK), pooled @ wo + bo, rtol=2e-5, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        nn.AttentionPool(3, num_heads=2, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------------------------
# Stochastic pools.
# --------------------------------------------------------------------------------------------


def test_global_stochastic_module_train_and_eval():
    pool = nn.GlobalStochasticPool(rngs=nnx.Rngs(0))
    a = np.maximum(X, 0)
    draws = [np.asarray(pool(X)) for _ in range(3)]
    for d in draws:  # every output is one of the input values of its channel
        assert all(np.any(np.isclose(X[b, ..., c], d[b, c])) for b in range(2) for c in range(3))
    assert not all(np.array_equal(draws[0], d) for d in draws[1:])  # a new key per call
    pool.eval()
    np.testing.assert_allclose(pool(X), np.sum(a * a, (1, 2)) / np.sum(a, (1, 2)), rtol=1e-6)
    pool.train()
    assert not pool.deterministic
    view = nnx.view(pool, deterministic=True)
    np.testing.assert_array_equal(view(X), view(X))
    key = jax.random.key(5)
    np.testing.assert_array_equal(
        pool(X, rngs=key), gapjax.global_stochastic_pool(X, key=key, train=True)
    )


def test_stochastic_module_needs_randomness_in_training():
    with pytest.raises(ValueError, match="needs random numbers"):
        nn.GlobalStochasticPool()(X)
    pool = nn.StochasticPool(2, stride=2)
    np.testing.assert_allclose(
        pool(XPOS, deterministic=True), gapjax.stochastic_pool(XPOS, 2, stride=2, train=False)
    )
    key = jax.random.key(1)
    np.testing.assert_array_equal(
        pool(XPOS, rngs=key), gapjax.stochastic_pool(XPOS, 2, key=key, train=True)
    )


# --------------------------------------------------------------------------------------------
# Transformations, dtypes, serialization.
# --------------------------------------------------------------------------------------------

MODULES = [
    lambda: nn.GlobalAvgPool(),
    lambda: nn.GeMPool(channels=3),
    lambda: nn.GWAP(3, rngs=nnx.Rngs(0)),
    lambda: nn.AttentionPool(3, num_heads=3, rngs=nnx.Rngs(0)),
    lambda: nn.MaxPool(2),
]


@pytest.mark.parametrize("make", MODULES, ids=lambda m: type(m()).__name__)
def test_jit_split_merge_and_vmap(make):
    module = make()
    graphdef, state = nnx.split(module)
    jitted = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    np.testing.assert_allclose(jitted(state, XPOS), module(XPOS), rtol=1e-6)
    per_example = jax.vmap(lambda x: nnx.merge(graphdef, state)(x[None])[0])(XPOS)
    np.testing.assert_allclose(per_example, module(XPOS), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", MODULES[:3], ids=lambda m: type(m()).__name__)
def test_low_precision_keeps_dtype(make):
    y = make()(XPOS.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16


def test_attention_pool_computation_dtype():
    x = XPOS.astype(jnp.bfloat16)
    assert nn.AttentionPool(3, rngs=nnx.Rngs(0))(x).dtype == jnp.float32  # Flax's promotion
    assert nn.AttentionPool(3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))(x).dtype == jnp.bfloat16


def test_state_serialization_round_trip():
    module = nn.AttentionPool(3, num_heads=3, rngs=nnx.Rngs(0))
    data = flax.serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(module)))
    fresh = nn.AttentionPool(3, num_heads=3, rngs=nnx.Rngs(99))
    assert not np.allclose(fresh(X), module(X))
    state = nnx.state(fresh)
    nnx.replace_by_pure_dict(state, flax.serialization.msgpack_restore(data))
    nnx.update(fresh, state)
    np.testing.assert_array_equal(fresh(X), module(X))


# --------------------------------------------------------------------------------------------
# Hostile input (issue 20): masked NaN, padded batches, impossible settings, wrong widths.
# --------------------------------------------------------------------------------------------

# A NaN in the masked corner of every image, and one example entirely masked (a padded batch).
X_NAN = np.array(XPOS)
X_NAN[:, 0, 0, :] = np.nan
MASK_PADDED = np.ones((2, 5, 4), bool)
MASK_PADDED[:, 0, 0] = False
MASK_PADDED[1] = False

LEARNED = [
    *(
        lambda t=t, c=c: nn.GWAP(3, transform=t, class_specific=c, rngs=nnx.Rngs(0))
        for t in ("softplus", "sigmoid", "exp", "exp_sigmoid", "relu")
        for c in (False, True)
    ),
    lambda: nn.AttentionPool(3, num_heads=3, rngs=nnx.Rngs(0)),
    lambda: nn.AttentionPool(3, data_format="channels_first", rngs=nnx.Rngs(0)),
    lambda: nn.GatedMixedPool(
        (5, 4), channels=3, gate_init=nnx.initializers.ones, rngs=nnx.Rngs(0)
    ),
    lambda: nn.MixedPool(0.3, channels=3),
    lambda: nn.GeMPool(channels=3),
    lambda: nn.LSEPool(2.0),
]


@pytest.mark.parametrize("make", LEARNED)
def test_masked_nan_and_padded_rows_leak_into_no_gradient(make):
    module = make()
    channels_first = getattr(module, "layout", {}).get("data_format") == "channels_first"
    x = jnp.moveaxis(jnp.asarray(X_NAN), -1, 1) if channels_first else jnp.asarray(X_NAN)

    def loss(module, x):
        return jnp.sum(module(x, mask=MASK_PADDED))

    y = module(x, mask=MASK_PADDED)
    assert np.isfinite(np.asarray(y)).all()
    grads, dx = nnx.grad(loss, argnums=(0, 1))(module, x)
    for leaf in jax.tree.leaves(grads):
        assert np.isfinite(np.asarray(leaf)).all()
    assert np.isfinite(np.asarray(dx)).all()
    clean = jnp.where(jnp.isnan(x), 0.0, x)  # the masked value does not matter
    np.testing.assert_allclose(y, module(clean, mask=MASK_PADDED), rtol=1e-6)


def test_mixed_pool_alpha_gradient_on_a_padded_batch():
    # One example fully masked: d/d alpha = sum over the others of (max - mean), not NaN.
    pool = nn.MixedPool(0.5)
    grad = nnx.grad(lambda m: jnp.sum(m(XPOS, mask=MASK_PADDED)))(pool)
    keep = MASK_PADDED[0]
    values = XPOS[0][keep]
    want = np.sum(values.max(0) - values.mean(0))
    np.testing.assert_allclose(grad.alpha[...], want, rtol=1e-5)


def test_attention_pool_channels_first_equals_channels_last():
    last = nn.AttentionPool(3, num_heads=3, rngs=nnx.Rngs(0))
    first = nn.AttentionPool(3, num_heads=3, data_format="channels_first", rngs=nnx.Rngs(0))
    x = jnp.asarray(RNG.normal(size=(2, 5, 4, 3)), jnp.float32)
    np.testing.assert_allclose(first(jnp.moveaxis(x, -1, 1)), last(x), rtol=1e-5, atol=1e-6)


BAD_SETTINGS = [
    (lambda: nn.MaxPool(0), r"MaxPool: max_pool: kernel_size must be >= 1"),
    (lambda: nn.MaxPool(2, stride=0), r"MaxPool: max_pool: stride must be >= 1"),
    (lambda: nn.AvgPool(2, padding=-1), r"AvgPool: avg_pool: padding must be >= 0"),
    (lambda: nn.AvgPool(2.5), r"AvgPool: avg_pool: kernel_size must be an int"),
    (lambda: nn.AvgPool(2, count_include_pad="no"), r"count_include_pad must be a bool"),
    (lambda: nn.MaxPool(2, dilation=0), r"dilation must be >= 1"),
    (lambda: nn.MaxPool(2, convention="tf"), r"max_pool: convention"),
    (lambda: nn.AdaptiveAvgPool(0), r"adaptive_avg_pool: output_size"),
    (lambda: nn.AdaptiveAvgPool(2.0), r"adaptive_avg_pool: output_size"),
    (lambda: nn.GlobalAvgPool(keepdims="no"), r"keepdims must be a bool"),
    (lambda: nn.GlobalAvgPool(axis=1.0), r"global_avg_pool: axis must be"),
    (lambda: nn.GlobalAvgPool(data_format="NHWC"), r"data_format"),
    (lambda: nn.TopKPool(2, halve="no"), r"TopKPool: topk_pool: halve must be a bool"),
    (lambda: nn.GlobalLPPool(float("inf")), r"p must be > 0 and finite"),
    (lambda: nn.GeMPool(float("nan")), r"GeMPool: gem_pool: p must be > 0"),
    (lambda: nn.GeMPool(keepdims="no"), r"GeMPool.*keepdims"),
    (lambda: nn.LSEPool(0.0), r"LSEPool: lse_pool: r must be > 0"),
    (lambda: nn.MixedPool(1.5), r"MixedPool: mixed_pool: alpha must lie in \[0, 1\]"),
    (lambda: nn.MixedPool(0.5, channels=0), r"MixedPool: channels must be a positive int"),
    (lambda: nn.GWAP(0, rngs=nnx.Rngs(0)), r"GWAP: in_features must be a positive int"),
    (lambda: nn.GWAP(3, class_specific="no", rngs=nnx.Rngs(0)), r"GWAP.*class_specific"),
    (lambda: nn.AttentionPool(3, num_heads=0, rngs=nnx.Rngs(0)), r"AttentionPool: num_heads"),
    (lambda: nn.AttentionPool(4, num_heads=3, rngs=nnx.Rngs(0)), r"divisible by"),
    (lambda: nn.AttentionPool(3, keepdims="no", rngs=nnx.Rngs(0)), r"AttentionPool.*keepdims"),
    (lambda: nn.GatedMixedPool((0, 4), rngs=nnx.Rngs(0)), r"GatedMixedPool: spatial_shape"),
    (lambda: nn.GatedMixedPool(4, rngs=nnx.Rngs(0)), r"GatedMixedPool.*spatial_shape"),
    (lambda: nn.GlobalStochasticPool(deterministic="no"), r"GlobalStochasticPool.*deterministic"),
]


@pytest.mark.parametrize("build,match", BAD_SETTINGS, ids=[m for _, m in BAD_SETTINGS])
def test_impossible_settings_fail_when_the_module_is_built(build, match):
    # The message names the module (or function) and the argument; under the test suite's
    # runtime type checker a wrongly typed argument may be caught by the annotation first.
    with pytest.raises((ValueError, TypeError)) as info:
        build()
    assert re.search(match, str(info.value), re.S), str(info.value)


@pytest.mark.parametrize(
    "module,arg",
    [
        (lambda: nn.GWAP(3, rngs=nnx.Rngs(0)), "in_features=3"),
        (lambda: nn.GWAP(3, class_specific=True, rngs=nnx.Rngs(0)), "in_features=3"),
        (lambda: nn.AttentionPool(3, rngs=nnx.Rngs(0)), "in_features=3"),
        (lambda: nn.GatedMixedPool((5, 4), channels=3, rngs=nnx.Rngs(0)), "channels=3"),
    ],
)
def test_wrong_input_width_names_the_module_and_the_shapes(module, arg):
    with pytest.raises(ValueError, match=rf"x of shape \(2, 5, 4, 4\) has 4 channels.*{arg}"):
        module()(jnp.ones((2, 5, 4, 4)))


def test_non_binary_mask_is_refused():
    pool = nn.GWAP(3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="GWAP: mask must hold only booleans or 0/1"):
        pool(XPOS, mask=np.full((2, 5, 4), 0.5))
    with pytest.raises(ValueError, match="global_avg_pool: mask must hold only"):
        nn.GlobalAvgPool()(XPOS, mask=np.full((2, 5, 4), 2.0))
