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
