"""MLPConv against a NumPy convolution; shapes, padding, initializers, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gapjax import nn


def np_conv(x, kernel, bias, pad):
    """Direct 2-D convolution (cross-correlation, NHWC / HWIO), stride 1, zero padding."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], h, w, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bhwc,co->bhwo", x[:, i : i + h, j : j + w], kernel[i, j])
    return out + bias


def test_mlpconv_equals_numpy_reference():
    block = nn.MLPConv(3, (6, 5, 4), kernel_size=3, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 6, 7, 3)).astype(np.float32)
    want = x.astype(np.float64)
    for i, layer in enumerate(block.layers):
        want = np.maximum(
            np_conv(want, np.asarray(layer.kernel[...]), np.asarray(layer.bias[...]), 1 - (i > 0)),
            0,
        )
    np.testing.assert_allclose(block(x), want, rtol=1e-4, atol=1e-5)


def test_final_activation_and_shapes():
    x = -jnp.ones((1, 5, 5, 2))
    linear_end = nn.MLPConv(2, (4, 3), kernel_size=5, final_activation=False, rngs=nnx.Rngs(0))
    y = linear_end(x)
    assert y.shape == (1, 5, 5, 3) and np.any(np.asarray(y) < 0)
    assert np.all(np.asarray(nn.MLPConv(2, (4, 3), kernel_size=5, rngs=nnx.Rngs(0))(x)) >= 0)
    assert nn.MLPConv(2, (4,), kernel_size=3, padding="VALID", rngs=nnx.Rngs(0))(x).shape == (
        1,
        3,
        3,
        4,
    )
    assert nn.MLPConv(2, (4,), kernel_size=(3,), rngs=nnx.Rngs(0))(jnp.ones((1, 9, 2))).shape == (
        1,
        9,
        4,
    )
    strided = nn.MLPConv(2, (4, 4), kernel_size=3, strides=2, rngs=nnx.Rngs(0))
    assert strided(jnp.ones((1, 8, 8, 2))).shape == (1, 4, 4, 4)


def test_per_layer_initializers_and_parameter_count():
    block = nn.MLPConv(
        3,
        (192, 160, 96),
        kernel_size=5,
        kernel_init=[nnx.initializers.normal(s) for s in (0.001, 0.01, 0.05)],
        rngs=nnx.Rngs(0),
    )
    stds = [float(jnp.std(layer.kernel[...])) for layer in block.layers]
    np.testing.assert_allclose(stds, [0.001, 0.01, 0.05], rtol=0.05)
    count = sum(p.size for p in jax.tree.leaves(nnx.state(block, nnx.Param)))
    assert count == (5 * 5 * 3 + 1) * 192 + (192 + 1) * 160 + (160 + 1) * 96
    assert all(np.all(np.asarray(layer.bias[...]) == 0) for layer in block.layers)


def test_mlpconv_errors():
    with pytest.raises(ValueError, match="features must be positive"):
        nn.MLPConv(3, (), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="kernel_size"):
        nn.MLPConv(3, (4,), kernel_size=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="2 initializers for 3 layers"):
        nn.MLPConv(3, (4, 4, 4), kernel_init=[jax.nn.initializers.zeros] * 2, rngs=nnx.Rngs(0))


def test_layers_keep_nnx_conv_parameters_and_paths():
    block = nn.MLPConv(3, (6, 5), kernel_size=3, rngs=nnx.Rngs(0))
    assert all(isinstance(layer, nnx.Conv) for layer in block.layers)
    paths = {path: v.shape for path, v in nnx.to_flat_state(nnx.state(block, nnx.Param))}
    assert paths == {
        ("layers", 0, "kernel"): (3, 3, 3, 6),
        ("layers", 0, "bias"): (6,),
        ("layers", 1, "kernel"): (1, 1, 6, 5),
        ("layers", 1, "bias"): (5,),
    }
    # The same parameters as the nnx.Conv-based block (same initializer calls, same order).
    reference = nnx.Conv(3, 6, (3, 3), padding=[(1, 1), (1, 1)], rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(block.layers[0].kernel[...], reference.kernel[...])


@pytest.mark.parametrize("spatial", [(9,), (6, 7), (4, 5, 3)])
def test_mlpconv_matches_nnx_conv_block_values_and_gradients(spatial):
    kernel = (3,) * len(spatial)
    block = nn.MLPConv(2, (4, 3), kernel_size=kernel, padding=1, rngs=nnx.Rngs(0))
    reference = nnx.clone(block)
    for layer in reference.layers:
        layer.conv_general_dilated = jax.lax.conv_general_dilated  # nnx.Conv's own
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *spatial, 2)), jnp.float32)

    def loss(model, x):
        return jnp.sum(model(x) ** 2)

    (v1, (g1, dx1)), (v2, (g2, dx2)) = [
        jax.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(m, x) for m in (block, reference)
    ]
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_mlpconv_exports_forward_and_gradient_for_every_platform():
    block = nn.MLPConv(3, (8, 4), kernel_size=5, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(block)
    x = jnp.ones((2, 8, 8, 3))

    def forward(params, x):
        return nnx.merge(graphdef, params)(x)

    def gradient(params, x):
        return jax.grad(lambda p, x: jnp.sum(forward(p, x) ** 2), argnums=(0, 1))(params, x)

    for fn in (forward, gradient):
        exported = jax.export.export(jax.jit(fn), platforms=("cpu", "cuda", "tpu"))(params, x)
        text = exported.mlir_module()
        assert "custom_call" not in text
        assert "stablehlo.convolution" in text  # the GPU/TPU branch keeps XLA's convolution
        assert exported.platforms == ("cpu", "cuda", "tpu")
    # The exported program runs here and gives the block's result.
    exported = jax.export.export(jax.jit(forward), platforms=("cpu", "cuda", "tpu"))(params, x)
    np.testing.assert_allclose(exported.call(params, x), block(x), rtol=1e-6)
