"""gapjax.nn.conv: the CPU formulations of the convolution against lax.conv_general_dilated.

The CPU formulation (``conv._cpu``: products for 1x1 kernels, im2col for k x k kernels on few
channels, Winograd for 3x3/5x5 on wider ones, tested on its own in test_winograd.py) and the
native one (``conv._default``, what GPU and TPU run) are called directly, so both are compared
on this CPU-only machine: values, the input and kernel gradients, and (through the modules) the
bias gradient, in float32 and bfloat16, over kernel sizes 1, 3, 5, strides, every padding form
MLPConv accepts and 1-3 spatial axes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from gapjax import nn
from gapjax.nn import conv

DN = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}

# (spatial shape, kernel, strides, padding): kernel sizes 1, 3, 5; strides 1, 2, mixed;
# symmetric and asymmetric (lo, hi) pairs, zero padding, SAME, VALID; 1, 2 and 3 spatial axes.
CASES = [
    ((9,), (1,), (1,), "VALID"),
    ((9,), (3,), (1,), ((1, 1),)),
    ((11,), (5,), (2,), ((2, 2),)),
    ((10,), (3,), (2,), "SAME"),
    ((7, 6), (1, 1), (1, 1), ((0, 0), (0, 0))),
    ((7, 6), (1, 1), (2, 2), "VALID"),
    ((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((8, 7), (3, 3), (2, 2), "SAME"),
    ((9, 8), (3, 3), (1, 2), ((0, 2), (1, 0))),
    ((8, 8), (5, 5), (1, 1), ((2, 2), (2, 2))),
    ((9, 9), (5, 5), (2, 2), "VALID"),
    ((8, 8), (5, 3), (1, 1), "SAME"),
    ((5, 4, 6), (1, 1, 1), (1, 1, 1), "VALID"),
    ((5, 6, 5), (3, 3, 3), (1, 2, 1), ((1, 1), (0, 1), (1, 1))),
    ((6, 5, 5), (3, 1, 5), (1, 1, 1), "SAME"),
]


def _args(case, dtype, seed=0, batch=2, cin=3, cout=4):
    spatial, window, strides, padding = case
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, *spatial, cin)), dtype)
    k = jnp.asarray(rng.normal(size=(*window, cin, cout)) / np.sqrt(np.prod(window) * cin), dtype)
    kwargs = {
        "window_strides": strides,
        "padding": padding,
        "dimension_numbers": DN[len(spatial)],
    }
    return x, k, kwargs


def _value_and_grads(fn, x, k, kwargs, seed=1):
    y, vjp = jax.vjp(lambda x, k: fn(x, k, **kwargs), x, k)
    g = jnp.asarray(np.random.default_rng(seed).normal(size=y.shape), y.dtype)
    return (y, *vjp(g))


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}k{c[1]}s{c[2]}p{c[3]}")
def test_cpu_formulation_matches_lax_float32(case):
    x, k, kwargs = _args(case, jnp.float32)
    got = jax.jit(lambda x, k: _value_and_grads(conv._cpu, x, k, kwargs))(x, k)
    want = jax.jit(lambda x, k: _value_and_grads(conv._default, x, k, kwargs))(x, k)
    direct = lax.conv_general_dilated(x, k, **kwargs)
    np.testing.assert_allclose(want[0], direct, rtol=1e-6, atol=1e-6)
    for name, a, b in zip(("value", "d input", "d kernel"), got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == jnp.float32, name
        # float32 rounding of sums taken in another order, relative to the array's scale.
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6 * scale, err_msg=name)


@pytest.mark.parametrize("case", CASES[1::3], ids=lambda c: f"{c[0]}k{c[1]}s{c[2]}p{c[3]}")
def test_cpu_formulation_matches_lax_bfloat16(case):
    x, k, kwargs = _args(case, jnp.bfloat16)
    got = jax.jit(lambda x, k: _value_and_grads(conv._cpu, x, k, kwargs))(x, k)
    x32, k32 = x.astype(jnp.float32), k.astype(jnp.float32)
    exact = jax.jit(lambda x, k: _value_and_grads(conv._default, x, k, kwargs))(x32, k32)
    native = jax.jit(lambda x, k: _value_and_grads(conv._default, x, k, kwargs))(x, k)
    for name, a, b, c in zip(("value", "d input", "d kernel"), got, native, exact, strict=True):
        assert a.dtype == b.dtype == jnp.bfloat16, name
        # Both bfloat16 results sit within bfloat16 rounding of the float32 one.
        assert _relative(a, c) < 1e-2, name
        assert _relative(a, b) < 2e-2, name


def test_public_function_takes_the_cpu_branch_here_and_keeps_native_conv_elsewhere():
    x, k, kwargs = _args(CASES[5], jnp.float32)  # 1x1, stride 2: products on CPU

    def loss(x, k):
        return jnp.sum(nn.conv_general_dilated(x, k, **kwargs) ** 2)

    fn = jax.jit(lambda x, k: nn.conv_general_dilated(x, k, **kwargs))
    np.testing.assert_allclose(fn(x, k), lax.conv_general_dilated(x, k, **kwargs), atol=2e-6)
    for f in (fn, jax.jit(jax.grad(loss, argnums=(0, 1)))):
        assert "convolution" not in f.lower(x, k).as_text()  # on CPU: the products
        cuda = jax.export.export(f, platforms=("cuda",))(x, k).mlir_module()
        assert "stablehlo.convolution" in cuda and "custom_call" not in cuda


def test_cpu_routing():
    """1x1 and k x k on few channels: products; 3x3 on wider inputs: Winograd (no
    convolution either); 7x7 on wider inputs, and stride 2: XLA."""
    one, few, wide, wide7, strided = (
        _args(((8, 8), window, strides, "SAME"), jnp.float32, cin=cin)
        for window, cin, strides in (
            ((1, 1), 32, (1, 1)),
            ((3, 3), 3, (1, 1)),
            ((3, 3), 32, (1, 1)),
            ((7, 7), 32, (1, 1)),
            ((3, 3), 32, (2, 2)),
        )
    )
    cases = ((one, 0, 0), (few, 0, 0), (wide, 0, 0), (wide7, 1, 1), (strided, 1, 1))
    for (x, k, kwargs), conv_fwd, conv_dw in cases:
        fwd = jax.jit(lambda x, k, kwargs=kwargs: conv._cpu(x, k, **kwargs))
        dw = jax.jit(jax.grad(lambda k, x, kwargs=kwargs: jnp.sum(conv._cpu(x, k, **kwargs) ** 2)))
        assert fwd.lower(x, k).as_text().count("stablehlo.convolution") == conv_fwd
        # The weight gradient alone: its forward pass plus the weight's cotangent.
        assert dw.lower(k, x).as_text().count("stablehlo.convolution") == conv_fwd + conv_dw


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lhs_dilation": (2, 1)},
        {"rhs_dilation": (1, 2)},
        {"dimension_numbers": ("NCHW", "OIHW", "NCHW")},
        {"dimension_numbers": None},
    ],
)
def test_what_the_formulation_does_not_cover_is_lax(kwargs):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 6)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 6, 6)), jnp.float32)
    args = {"window_strides": (1, 1), "padding": ((1, 1), (1, 1)), "dimension_numbers": DN[2]}
    args.update(kwargs)
    if args["dimension_numbers"] != DN[2]:
        k = k.transpose(3, 2, 0, 1)  # OIHW
    assert conv._plan(x, k, **args) is None
    np.testing.assert_array_equal(
        nn.conv_general_dilated(x, k, **args), lax.conv_general_dilated(x, k, **args)
    )


def test_feature_groups_are_lax():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 6)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    args = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": DN[2]}
    args["feature_group_count"] = 2
    assert conv._plan(x, k, **args) is None
    np.testing.assert_array_equal(
        nn.conv_general_dilated(x, k, **args), lax.conv_general_dilated(x, k, **args)
    )


@pytest.mark.parametrize(
    ("window", "strides", "padding"),
    [((1, 1), 1, "VALID"), ((3, 3), 2, 1), ((5, 5), 1, [(2, 1), (0, 2)]), ((3, 3), 1, "SAME")],
)
def test_conv_module_is_nnx_conv_with_bias_gradient(window, strides, padding):
    kw = {"strides": strides, "padding": padding, "bias_init": nnx.initializers.normal(1.0)}
    ours = nn.Conv(3, 5, window, rngs=nnx.Rngs(0), **kw)
    theirs = nnx.Conv(3, 5, window, rngs=nnx.Rngs(0), **kw)
    state, their_state = nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param)
    assert jax.tree.structure(state) == jax.tree.structure(their_state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(their_state), strict=True):
        np.testing.assert_array_equal(a, b)  # same names, shapes and initialization
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 8, 3)), jnp.float32)

    def loss(model, x):
        y = model(x)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape)))

    (v1, (g1, dx1)), (v2, (g2, dx2)) = [
        jax.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(m, x) for m in (ours, theirs)
    ]
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g1["bias"][...], g2["bias"][...], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g1["kernel"][...], g2["kernel"][...], rtol=1e-5, atol=1e-5)


def test_nnx_conv_state_loads_into_conv_and_back():
    theirs = nnx.Conv(4, 6, (3, 3), rngs=nnx.Rngs(1))
    ours = nn.Conv(4, 6, (3, 3), rngs=nnx.Rngs(2))
    nnx.update(ours, nnx.state(theirs))
    x = jnp.ones((1, 5, 5, 4))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    back = nnx.Conv(4, 6, (3, 3), rngs=nnx.Rngs(3))
    nnx.update(back, nnx.state(ours))
    np.testing.assert_array_equal(back.kernel[...], theirs.kernel[...])
    assert isinstance(ours, nnx.Conv)


def test_bfloat16_module_and_float32_parameters():
    model = nn.Conv(3, 4, (3, 3), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    reference = nnx.Conv(3, 4, (3, 3), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    y = model(x)
    assert y.dtype == jnp.bfloat16 and model.kernel[...].dtype == jnp.float32
    assert _relative(y, reference(x)) < 1e-2
    grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32) ** 2))(model)
    ref_grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32) ** 2))(reference)
    assert grads["kernel"][...].dtype == jnp.float32
    assert _relative(grads["kernel"][...], ref_grads["kernel"][...]) < 2e-2


def _conv_mm(x, k, **kwargs):
    strides, pads = conv._plan(x, k, **kwargs)
    return conv._conv_cpu(
        x, k, strides=strides, pads=pads, precision=None, preferred_element_type=None
    )


@pytest.mark.parametrize("case", CASES[6:12:2], ids=lambda c: f"{c[0]}k{c[1]}s{c[2]}p{c[3]}")
def test_im2col_product_formulation_of_k_by_k_kernels(case):
    # The full matrix-product path (routed to for k x k kernels on few channels; wider ones
    # measured faster with XLA's convolution) computes the convolution and its gradients.
    x, k, kwargs = _args(case, jnp.float32)
    got = jax.jit(lambda x, k: _value_and_grads(_conv_mm, x, k, kwargs))(x, k)
    want = jax.jit(lambda x, k: _value_and_grads(conv._default, x, k, kwargs))(x, k)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6 * float(jnp.max(jnp.abs(b))))


def test_weight_gradient_splits_its_rows_into_groups():
    # Enough rows for the grouped product (batch 4 x 16 x 16 = 1024 rows: two groups of 512).
    x, k, kwargs = _args(((16, 16), (3, 3), (1, 1), "SAME"), jnp.float32, batch=4, cin=8)
    got = jax.jit(lambda x, k: _value_and_grads(conv._cpu, x, k, kwargs))(x, k)
    want = jax.jit(lambda x, k: _value_and_grads(conv._default, x, k, kwargs))(x, k)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
