"""Contract sweep (issue 20): every public pooling function and module against hostile settings.

Each hostile call must either raise ValueError/TypeError whose message names the function (or
module) and the argument, or return a finite, correct result with finite gradients. The kinds
swept: zero, negative, inf and NaN sizes and rates; floats, bools, strings and arrays where an
int is due; non-bool switches; masks that are not 0/1; NaN behind a mask and fully masked
examples; wrong input widths; size-0 batch and channel axes. Arrays are tiny and shapes are
shared, so the compilations are few and the sweep runs in seconds.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gapjax
import gapjax.cam
from gapjax import nn, pooling
from gapjax.nn import linen as gl

RNG = np.random.default_rng(0)
X = RNG.uniform(0.5, 2.0, (2, 3, 3, 2)).astype(np.float32)  # (batch, h, w, channels), > 0
SITES = RNG.uniform(0.5, 2.0, (2, 3, 3)).astype(np.float32)  # weights / scores per position
KEY = jax.random.key(0)


@dataclasses.dataclass(frozen=True)
class Fn:
    """A public pooling function and the settings of one good call on ``X``."""

    name: str
    settings: dict
    sites: str | None = None  # the name of a per-position array argument (weights, scores)
    window: bool = False

    @property
    def fn(self) -> Callable:
        return getattr(gapjax, self.name)

    def __call__(self, x: Any = X, **changes: Any) -> Any:
        kwargs = {**self.settings, **changes}
        if self.sites is not None and self.sites not in changes:
            kwargs[self.sites] = SITES[: np.shape(x)[0]]
        return self.fn(x, **kwargs)


GLOBAL = [
    Fn("global_avg_pool", {}),
    Fn("global_sum_pool", {}),
    Fn("global_max_pool", {}),
    Fn("global_min_pool", {}),
    Fn("global_lp_pool", {"p": 2.0}),
    Fn("gem_pool", {"p": 3.0}),
    Fn("lse_pool", {"r": 2.0}),
    Fn("soft_pool", {}),
    Fn("topk_pool", {"k": 2, "k_min": 1, "alpha": 0.5}),
    Fn("mixed_pool", {"alpha": 0.3}),
    Fn("avgmax_pool", {}),
    Fn("catavgmax_pool", {}),
    Fn("weighted_avg_pool", {}, sites="weights"),
    Fn("attention_pool", {}, sites="scores"),
    Fn("global_stochastic_pool", {"train": False}),
]
WINDOW = [
    Fn("avg_pool", {"kernel_size": 2}, window=True),
    Fn("max_pool", {"kernel_size": 2}, window=True),
    Fn("min_pool", {"kernel_size": 2}, window=True),
    Fn("lp_pool", {"p": 2.0, "kernel_size": 2}, window=True),
    Fn("stochastic_pool", {"kernel_size": 2, "train": False}, window=True),
    Fn("adaptive_avg_pool", {"output_size": 2}, window=True),
    Fn("adaptive_max_pool", {"output_size": 2}, window=True),
]
FNS = {f.name: f for f in GLOBAL + WINDOW}


def test_the_sweep_covers_every_public_pooling_function():
    assert set(FNS) | {"max_unpool"} == set(pooling.__all__)


def _finite(tree: Any) -> bool:
    return all(np.isfinite(np.asarray(leaf, np.float64)).all() for leaf in jax.tree.leaves(tree))


def _names(error: BaseException, owner: str, arg: str) -> None:
    """The message names the function or module and the argument."""
    message = str(error)
    assert owner in message and arg in message, f"{owner}/{arg} not named in: {message}"


def _raises(call: Callable, owner: str, arg: str) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    _names(info.value, owner, arg)


# --------------------------------------------------------------------------------------------
# Rates and powers: zero, negative, inf, NaN, non-numbers.
# --------------------------------------------------------------------------------------------

BAD_RATES = [0.0, -1.0, np.inf, -np.inf, np.nan, "2"]
RATES = [
    ("global_lp_pool", "p", BAD_RATES),
    ("gem_pool", "p", BAD_RATES),
    ("gem_pool", "eps", BAD_RATES),
    ("lse_pool", "r", BAD_RATES),
    ("lp_pool", "p", BAD_RATES),
    ("mixed_pool", "alpha", [-0.1, 1.5, np.inf, np.nan, "0.5"]),
    ("topk_pool", "alpha", [np.inf, -np.inf, np.nan, "1"]),
]


@pytest.mark.parametrize("name,arg,bad", RATES, ids=[f"{n}-{a}" for n, a, _ in RATES])
def test_bad_rates_raise_naming_function_and_argument(name, arg, bad):
    for value in bad:
        _raises(lambda v=value: FNS[name](**{arg: v}), name, arg)


# Valid but extreme: each gives a finite, correct result with finite gradients.
EXTREME = [
    ("gem_pool", "p", 1e-10, lambda v: np.exp(np.mean(np.log(v)))),  # geometric mean
    ("gem_pool", "p", 1e10, np.max),
    ("global_lp_pool", "p", 1e10, np.max),
    ("lse_pool", "r", 1e-40, np.mean),  # subnormal: the limit
    ("lse_pool", "r", 1e30, np.max),
    ("mixed_pool", "alpha", 0.0, np.mean),
    ("mixed_pool", "alpha", 1.0, np.max),
]


@pytest.mark.parametrize("name,arg,value,limit", EXTREME, ids=[f"{e[0]}-{e[2]}" for e in EXTREME])
def test_extreme_rates_give_their_limit(name, arg, value, limit):
    f = FNS[name]
    want = np.apply_along_axis(limit, 1, X.reshape(2, 9, 2).astype(np.float64))
    np.testing.assert_allclose(f(**{arg: value}), want, rtol=1e-5)
    grads = jax.grad(lambda x, v: jnp.sum(f(x, **{arg: v})), argnums=(0, 1))(X, value)
    assert _finite(grads)


# --------------------------------------------------------------------------------------------
# Sizes and counts: zero, negative, floats, bools, strings, arrays, non-finite, too large.
# --------------------------------------------------------------------------------------------

NOT_INTS = [2.5, np.inf, np.nan, True, "2", jnp.array(2), np.array([2])]
SIZES = [
    ("topk_pool", "k", [0, -1, 10, 1.5, np.nan, np.inf, True, "2", jnp.array(2)]),
    ("topk_pool", "k_min", [-1, 10, 1.5, np.nan, True, "2", np.array([1])]),
    *((f, "kernel_size", [0, -1, 4, *NOT_INTS]) for f in ("avg_pool", "max_pool", "lp_pool")),
    *((f, "kernel_size", [0, -2, *NOT_INTS]) for f in ("min_pool", "stochastic_pool")),
    *((f, "stride", [0, -1, *NOT_INTS]) for f in ("avg_pool", "max_pool", "stochastic_pool")),
    *((f, "dilation", [0, -1, 5, *NOT_INTS]) for f in ("max_pool", "min_pool")),
    *((f, "padding", [-1, 2, 1.5, True, "full", jnp.array(1)]) for f in ("avg_pool", "max_pool")),
    ("avg_pool", "divisor_override", [0, -1, 1.5, True, "2", jnp.array(2)]),
    *((f, "output_size", [0, -1, *NOT_INTS]) for f in ("adaptive_avg_pool", "adaptive_max_pool")),
]


@pytest.mark.parametrize("name,arg,bad", SIZES, ids=[f"{n}-{a}" for n, a, _ in SIZES])
def test_bad_sizes_raise_naming_function_and_argument(name, arg, bad):
    for value in bad:
        _raises(lambda v=value: FNS[name](**{arg: v}), name, arg)


NUMPY_INTS = [
    ("topk_pool", {"k": np.int64(2), "k_min": np.int32(1)}, {"k": 2, "k_min": 1}),
    (
        "avg_pool",
        {"kernel_size": np.int64(2), "padding": np.int8(1)},
        {"kernel_size": 2, "padding": 1},
    ),
    ("max_pool", {"kernel_size": (np.int64(2), 2), "stride": np.int16(1)}, {"stride": 1}),
    ("max_pool", {"dilation": np.uint8(2)}, {"dilation": 2}),
    ("avg_pool", {"divisor_override": np.int64(3)}, {"divisor_override": 3}),
    ("adaptive_avg_pool", {"output_size": np.int64(2)}, {}),
    ("adaptive_max_pool", {"output_size": (np.int32(1), None)}, {"output_size": (1, None)}),
]


@pytest.mark.parametrize("name,numpy,plain", NUMPY_INTS, ids=[n for n, _, _ in NUMPY_INTS])
def test_numpy_integers_are_accepted_as_sizes(name, numpy, plain):
    np.testing.assert_array_equal(FNS[name](**numpy), FNS[name](**plain))


def test_max_unpool_bad_settings():
    y, i = gapjax.max_pool(X, 2, return_indices=True)
    for arg, bad in [
        ("kernel_size", [0, -1, 2.5, True, jnp.array(2)]),
        ("stride", [0, 1.5, "2"]),
        ("padding", [-1, 0.5]),
        ("output_size", [(0, 3), (2.5, 3), (True, 3), (9, 9), jnp.array([3, 3])]),
    ]:
        for value in bad:
            _raises(
                lambda v=value, a=arg: gapjax.max_unpool(y, i, **{"kernel_size": 2, a: v}),
                "max_unpool",
                arg,
            )
    _raises(lambda: gapjax.max_unpool(y, i.astype(jnp.float32), 2), "max_unpool", "indices")
    got = gapjax.max_unpool(y, i, np.int64(2), output_size=(np.int64(3), 3))
    np.testing.assert_array_equal(got, gapjax.max_unpool(y, i, 2, output_size=(3, 3)))


def test_windows_of_padding_only_and_huge_kernels():
    x = jnp.ones((1, 2, 1))
    _raises(lambda: gapjax.max_pool(x, 2, dilation=5, padding=3), "max_pool", "padding")
    _raises(lambda: gapjax.avg_pool(jnp.ones((1, 0, 1)), 2, padding=1), "avg_pool", "padding")
    _raises(lambda: gapjax.avg_pool(x, 10**6, padding=1), "avg_pool", "kernel_size")
    y = gapjax.avg_pool(jnp.ones((1, 6, 6, 3)), 10**6, padding="same")  # instant: 11 taps
    np.testing.assert_array_equal(y, np.ones((1, 1, 1, 3)))


# --------------------------------------------------------------------------------------------
# Switches: only bools (NumPy bools too); 'no' is not False.
# --------------------------------------------------------------------------------------------

NOT_BOOLS = ["no", "yes", 1, 0, 1.0, np.array(True)]
SWITCHES = [
    *((f.name, "keepdims", [*NOT_BOOLS, None]) for f in GLOBAL),
    ("topk_pool", "halve", [*NOT_BOOLS, None]),
    ("global_stochastic_pool", "train", [*NOT_BOOLS, None]),
    ("stochastic_pool", "train", [*NOT_BOOLS, None]),
    ("avg_pool", "count_include_pad", NOT_BOOLS),
    *((f, "ceil_mode", NOT_BOOLS) for f in ("avg_pool", "max_pool", "lp_pool", "stochastic_pool")),
    *(
        (f, "return_indices", [*NOT_BOOLS, None])
        for f in ("max_pool", "min_pool", "adaptive_max_pool")
    ),
]


@pytest.mark.parametrize("name,arg,bad", SWITCHES, ids=[f"{n}-{a}" for n, a, _ in SWITCHES])
def test_switches_must_be_bools(name, arg, bad):
    for value in bad:
        _raises(lambda v=value: FNS[name](**{arg: v}), name, arg)
    want = FNS[name](**{arg: False})
    got = FNS[name](**{arg: np.bool_(False)})
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("f", GLOBAL, ids=lambda f: f.name)
def test_axis_and_data_format_of_the_wrong_kind(f):
    for value in [1.0, (1, 2.0), True, jnp.array(1), np.array([1, 2]), "1", ()]:
        _raises(lambda v=value: f(axis=v), f.name, "axis")
    for value in ["NHWC", None, 1]:
        _raises(lambda v=value: f(data_format=v), f.name, "data_format")
    sites = {f.sites: SITES[..., None]} if f.sites else {}  # with axis: broadcasts against x
    np.testing.assert_array_equal(
        f(axis=(np.int64(1), np.int32(2)), **sites), f(axis=(1, 2), **sites)
    )


# --------------------------------------------------------------------------------------------
# Masks: only 0/1; NaN and inf behind the mask and fully masked examples leak nowhere.
# --------------------------------------------------------------------------------------------

MASK = np.ones((2, 3, 3), bool)
MASK[:, 0, 0] = False  # a masked corner in every image
MASK[1] = False  # and a fully masked (padded) example
X_BAD = X.copy()
X_BAD[0, 0, 0, 0] = np.nan
X_BAD[0, 0, 0, 1] = np.inf
X_BAD[1] = np.nan


@pytest.mark.parametrize("f", GLOBAL, ids=lambda f: f.name)
def test_masks_must_be_0_or_1(f):
    for bad in (0.5, 2.0, np.nan, -1.0):
        mask = MASK.astype(np.float32)
        mask[0, 1, 1] = bad
        _raises(lambda m=mask: f(mask=m), f.name, "mask")
    np.testing.assert_array_equal(f(mask=MASK.astype(np.float32)), f(mask=MASK))


# The dynamic arguments of each function that take gradients (besides x).
PARAMS = {
    "global_lp_pool": "p",
    "gem_pool": "p",
    "lse_pool": "r",
    "topk_pool": "alpha",
    "mixed_pool": "alpha",
    "weighted_avg_pool": "weights",
    "attention_pool": "scores",
}


@pytest.mark.parametrize("f", GLOBAL, ids=lambda f: f.name)
def test_nan_behind_the_mask_and_padded_examples_leak_nowhere(f):
    arg = PARAMS.get(f.name)
    value = SITES if f.sites else f.settings.get(arg, 0.0)

    def loss(x, v):
        return jnp.sum(f(x, mask=MASK, **({arg: v} if arg else {})))

    out = f(X_BAD, mask=MASK)
    assert _finite(out)
    np.testing.assert_array_equal(out, f(np.where(MASK[..., None], X, 0.0), mask=MASK))
    np.testing.assert_array_equal(out[1], 0.0)  # fill_value for the padded example
    grads = jax.grad(loss, argnums=(0, 1))(X_BAD, value)
    assert _finite(grads)
    assert not np.asarray(grads[0])[~MASK].any()  # nothing flows to masked positions


# --------------------------------------------------------------------------------------------
# Size-0 batch and channel axes: correctly shaped empty results, with gradients.
# --------------------------------------------------------------------------------------------

EMPTY = {
    "batch": np.zeros((0, 3, 3, 2), np.float32),
    "channels": np.zeros((2, 3, 3, 0), np.float32),
}


def _expected_shape(f: Fn, x: np.ndarray, **kw: Any) -> tuple:
    """The shape the call gives on X, with the empty axis empty."""
    if "mask" in kw:
        kw = {**kw, "mask": MASK}
    full = jax.eval_shape(lambda: f(X, **kw))
    shape = list(jax.tree.leaves(full)[0].shape)
    if x.shape[0] == 0:
        shape[0] = 0
    else:
        shape[-1] = 0
    return tuple(shape)


@pytest.mark.parametrize("axis", list(EMPTY))
@pytest.mark.parametrize("f", GLOBAL + WINDOW, ids=lambda f: f.name)
def test_size_zero_axes(f, axis):
    x = EMPTY[axis]
    extra = [{}]
    if f.name in ("max_pool", "min_pool", "adaptive_max_pool"):
        extra.append({"return_indices": True})
    if f.name in ("global_stochastic_pool", "stochastic_pool"):
        extra.append({"train": True, "key": KEY})
    if not f.window:
        extra.append({"mask": np.ones(x.shape[:-1], bool)})
    for kw in extra:
        out = f(x, **kw)
        for leaf in jax.tree.leaves(out):
            assert leaf.shape == _expected_shape(f, x, **kw)
        grad = jax.grad(lambda v, kw=kw: jnp.sum(jax.tree.leaves(f(v, **kw))[0]))(x)
        assert grad.shape == x.shape
    if f.name == "max_pool":
        y, i = f(x, return_indices=True)
        assert gapjax.max_unpool(y, i, 2, output_size=(3, 3)).shape == x.shape


# --------------------------------------------------------------------------------------------
# Modules: settings checked when built, wrong widths named, empty batches, masked NaN.
# --------------------------------------------------------------------------------------------

# Fixed modules: (class, the function's good settings) for every one of them.
FIXED = {
    nn.GlobalAvgPool: "global_avg_pool",
    nn.GlobalSumPool: "global_sum_pool",
    nn.GlobalMaxPool: "global_max_pool",
    nn.GlobalMinPool: "global_min_pool",
    nn.GlobalLPPool: "global_lp_pool",
    nn.AvgMaxPool: "avgmax_pool",
    nn.CatAvgMaxPool: "catavgmax_pool",
    nn.SoftPool: "soft_pool",
    nn.TopKPool: "topk_pool",
    nn.AvgPool: "avg_pool",
    nn.MaxPool: "max_pool",
    nn.MinPool: "min_pool",
    nn.LPPool: "lp_pool",
    nn.AdaptiveAvgPool: "adaptive_avg_pool",
    nn.AdaptiveMaxPool: "adaptive_max_pool",
}


@pytest.mark.parametrize("cls", list(FIXED), ids=lambda c: c.__name__)
def test_fixed_modules_check_their_settings_when_built(cls):
    name = FIXED[cls]
    good = FNS[name].settings
    module = cls(**good)
    np.testing.assert_array_equal(module(X), FNS[name]())
    assert module(EMPTY["batch"]).shape[0] == 0
    sweeps = [s for s in RATES + SIZES + SWITCHES if s[0] == name]
    assert sweeps
    for _, arg, bad in sweeps:
        for value in bad:
            # Data-free settings fail when the module is built; the rest (a kernel larger than
            # x, k above the number of positions) when it is called, naming the function.
            try:
                built = cls(**{**good, arg: value})
            except (ValueError, TypeError) as e:
                _names(e, cls.__name__, arg)
                continue
            _raises(lambda m=built: m(X), name, arg)


LEARNED = [
    (
        lambda **kw: nn.GeMPool(**kw),
        "GeMPool",
        {"p": [0.0, np.inf, np.nan], "channels": [0, -1, 2.5, True]},
    ),
    (lambda **kw: nn.LSEPool(**kw), "LSEPool", {"r": [0.0, -1.0, np.inf], "channels": [0]}),
    (lambda **kw: nn.MixedPool(**kw), "MixedPool", {"alpha": [1.5, np.nan], "channels": [0]}),
    (
        lambda **kw: nn.GWAP(**{"in_features": 2, **kw}, rngs=nnx.Rngs(0)),
        "GWAP",
        {"in_features": [0, -1, 2.5], "class_specific": ["no"], "transform": ["tanh"]},
    ),
    (
        lambda **kw: nn.AttentionPool(**{"in_features": 2, **kw}, rngs=nnx.Rngs(0)),
        "AttentionPool",
        {
            "in_features": [0],
            "num_heads": [0, -1, 3],
            "qkv_features": [0, 2.5],
            "out_features": [0],
        },
    ),
    (
        lambda **kw: nn.GatedMixedPool(**{"spatial_shape": (3, 3), **kw}, rngs=nnx.Rngs(0)),
        "GatedMixedPool",
        {"spatial_shape": [(0, 3), (3, -1), (3, 2.5), 3], "channels": [0, 2.5]},
    ),
    (lambda **kw: nn.GlobalStochasticPool(**kw), "GlobalStochasticPool", {"deterministic": ["no"]}),
    (
        lambda **kw: nn.StochasticPool(**{"kernel_size": 2, **kw}),
        "StochasticPool",
        {"kernel_size": [0]},
    ),
]


@pytest.mark.parametrize("build,owner,bad", LEARNED, ids=[o for _, o, _ in LEARNED])
def test_learned_modules_check_their_settings_when_built(build, owner, bad):
    for arg, values in {**bad, "keepdims": ["no"], "data_format": ["NHWC"]}.items():
        if owner in ("StochasticPool",) and arg == "keepdims":
            continue
        for value in values:
            _raises(lambda a=arg, v=value: build(**{a: v}), owner, arg)


WIDTH = [
    (lambda: nn.GWAP(3, rngs=nnx.Rngs(0)), "GWAP", "in_features"),
    (lambda: nn.GWAP(3, class_specific=True, rngs=nnx.Rngs(0)), "GWAP", "in_features"),
    (lambda: nn.AttentionPool(3, rngs=nnx.Rngs(0)), "AttentionPool", "in_features"),
    (lambda: nn.GatedMixedPool((3, 3), channels=3, rngs=nnx.Rngs(0)), "GatedMixedPool", "channels"),
    (lambda: nn.GeMPool(channels=3), "gem_pool", "p"),
    (lambda: nn.MixedPool(channels=3), "mixed_pool", "alpha"),
]


@pytest.mark.parametrize("build,owner,arg", WIDTH, ids=[f"{o}-{a}" for _, o, a in WIDTH])
def test_wrong_input_width_names_module_argument_and_shape(build, owner, arg):
    with pytest.raises(ValueError) as info:
        build()(X)  # X has 2 channels
    _names(info.value, owner, arg)
    assert str(X.shape) in str(info.value) or "(3,)" in str(info.value)  # the shapes


MODULES_WITH_MASKS = [
    lambda: nn.GWAP(2, transform="exp", class_specific=True, rngs=nnx.Rngs(0)),
    lambda: nn.GWAP(2, rngs=nnx.Rngs(0)),
    lambda: nn.AttentionPool(2, num_heads=2, rngs=nnx.Rngs(0)),
    lambda: nn.GatedMixedPool(
        (3, 3), channels=2, gate_init=nnx.initializers.ones, rngs=nnx.Rngs(0)
    ),
    lambda: nn.MixedPool(channels=2),
    lambda: nn.GeMPool(channels=2),
    lambda: nn.LSEPool(),
]


@pytest.mark.parametrize("build", MODULES_WITH_MASKS, ids=lambda b: type(b()).__name__)
def test_learned_modules_on_hostile_batches(build):
    module = build()
    out, (grads, dx) = nnx.value_and_grad(lambda m, x: jnp.sum(m(x, mask=MASK)), argnums=(0, 1))(
        module, X_BAD
    )
    assert _finite(out) and _finite(grads) and _finite(dx)
    _raises(lambda: module(X, mask=MASK * 0.5), "", "mask")
    assert module(EMPTY["batch"]).shape[0] == 0


LINEN = [
    (lambda: gl.GlobalAvgPool(keepdims="no"), "GlobalAvgPool", "keepdims"),
    (lambda: gl.GlobalLPPool(p=0.0), "GlobalLPPool", "p"),
    (lambda: gl.TopKPool(k=2, halve="no"), "TopKPool", "halve"),
    (lambda: gl.GeMPool(p_init=np.inf), "GeMPool", "p"),
    (lambda: gl.GeMPool(channels=0), "GeMPool", "channels"),
    (lambda: gl.LSEPool(r_init=-1.0), "LSEPool", "r"),
    (lambda: gl.MixedPool(alpha_init=np.nan), "MixedPool", "alpha"),
    (lambda: gl.GWAP(data_format="NHWC"), "GWAP", "data_format"),
    (lambda: gl.GlobalStochasticPool(deterministic="no"), "GlobalStochasticPool", "deterministic"),
]


@pytest.mark.parametrize("build,owner,arg", LINEN, ids=[f"{o}-{a}" for _, o, a in LINEN])
def test_linen_modules_check_their_settings_when_built(build, owner, arg):
    _raises(build, owner, arg)


def test_linen_learned_modules_on_hostile_batches():
    for module in (gl.GWAP(), gl.GWAP(transform="exp", class_specific=True), gl.MixedPool()):
        variables = module.init(KEY, X)
        out, grads = jax.value_and_grad(lambda v, m=module: jnp.sum(m.apply(v, X_BAD, mask=MASK)))(
            variables
        )
        assert _finite(out) and _finite(grads)


def test_cam_upsample_sizes():
    maps = jnp.ones((1, 3, 3, 2))
    for size in [(0, 4), (-1, 4), (2.5, 4), (True, 4), 4]:
        _raises(lambda s=size: gapjax.cam.upsample(maps, s), "upsample", "size")
    assert gapjax.cam.upsample(maps, (np.int64(6), 6)).shape == (1, 6, 6, 2)
