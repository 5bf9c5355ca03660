"""CAM and Grad-CAM: the class-score identity, Grad-CAM ~ CAM for GAP + linear, jit, vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gapjax
from gapjax.cam import class_activation_maps, grad_cam, grad_cam_from_head, upsample
from gapjax.models import nin

RNG = np.random.default_rng(0)
F = RNG.normal(size=(3, 4, 5, 6)).astype(np.float32)  # features (batch, h, w, channels)
W = RNG.normal(size=(6, 7)).astype(np.float32)  # linear head (channels, classes)
B = RNG.normal(size=(7,)).astype(np.float32)
X = jnp.asarray(RNG.uniform(0, 16, size=(3, 8, 8, 1)), jnp.float32)


def linear_head(f):
    return gapjax.global_avg_pool(f) @ W + B


def test_cam_reference_and_class_score_identity():
    maps = class_activation_maps(F, W)
    want = np.einsum("bhwk,kc->bhwc", F.astype(np.float64), W)
    np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-5)
    # The class score equals the mean of its map plus its bias (Zhou et al., eq. 2).
    np.testing.assert_allclose(maps.mean(axis=(1, 2)) + B, linear_head(F), rtol=1e-5, atol=1e-5)


def test_cam_of_a_gap_head_is_the_class_maps():
    model = nin.nin_digits(rngs=nnx.Rngs(0))
    model.eval()
    logits, extra = model(X, return_intermediates=True)
    maps = class_activation_maps(extra["maps"])
    np.testing.assert_array_equal(maps, extra["maps"])
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), logits, rtol=1e-5)
    up = class_activation_maps(extra["maps"], size=(8, 8))
    assert up.shape == (3, 8, 8, 10)
    np.testing.assert_allclose(up, jax.image.resize(extra["maps"], (3, 8, 8, 10), "bilinear"))


def test_upsample_nearest_repeats_cells():
    m = RNG.normal(size=(1, 2, 2, 1)).astype(np.float32)
    np.testing.assert_array_equal(
        upsample(m, (4, 4), method="nearest"), m.repeat(2, 1).repeat(2, 2)
    )


def test_grad_cam_is_relu_cam_over_area_for_gap_linear_head():
    """alpha_kc = w_kc / (h w), so L_c = relu(M_c) / (h w)."""
    target = jnp.array([0, 3, 6])
    got = grad_cam_from_head(linear_head, F, target=target)
    maps = np.asarray(class_activation_maps(F, W))
    want = (
        np.maximum(np.take_along_axis(maps, np.asarray(target)[:, None, None, None], -1)[..., 0], 0)
        / 20
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    raw = grad_cam_from_head(linear_head, F, target=2, relu=False)
    np.testing.assert_allclose(raw, maps[..., 2] / 20, rtol=1e-5, atol=1e-6)


def test_grad_cam_default_target_is_the_prediction():
    predicted = jnp.argmax(linear_head(F), axis=-1)
    np.testing.assert_array_equal(
        grad_cam_from_head(linear_head, F), grad_cam_from_head(linear_head, F, target=predicted)
    )


@pytest.fixture(scope="module")
def model():
    m = nin.nin_digits(rngs=nnx.Rngs(1))
    m.eval()
    return m


def test_grad_cam_on_a_model_layer_equals_the_split_model(model):
    target = jnp.array([1, 2, 3])
    got = grad_cam(model, X, layer="blocks.1", target=target)
    want = grad_cam_from_head(model.head, model.features(X), target=target)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # An inner layer, by a slash path, upsampled.
    inner = grad_cam(model, X, layer="blocks/0/layers/2", target=target, size=(16, 16))
    assert inner.shape == (3, 16, 16)
    # The model is restored: same structure and outputs.
    assert isinstance(model.blocks[1], type(model.blocks[0]))
    np.testing.assert_allclose(model(X), model.head(model.features(X)), rtol=1e-6)


def test_grad_cam_numerical_gradient(model):
    """alpha from a finite difference of the class score w.r.t. the block-1 output."""
    a = model.features(X)
    head = model.head
    eps = 1e-2
    k = 4
    bump = jnp.zeros_like(a).at[..., k].set(eps)
    alpha_k = (head(a + bump)[:, 5] - head(a - bump)[:, 5]) / (2 * eps) / (a.shape[1] * a.shape[2])
    raw = grad_cam_from_head(head, a, target=5, relu=False)
    grads_alpha = jax.grad(lambda a: jnp.sum(head(a)[:, 5]))(a).mean(axis=(1, 2))
    np.testing.assert_allclose(grads_alpha[:, k], alpha_k, rtol=2e-2, atol=1e-5)
    np.testing.assert_allclose(
        raw, jnp.sum(grads_alpha[:, None, None, :] * a, -1), rtol=1e-5, atol=1e-6
    )


def test_grad_cam_under_jit_and_vmap(model):
    eager = grad_cam(model, X, layer="blocks.1", size=(8, 8))
    graphdef, state = nnx.split(model)
    jitted = jax.jit(
        lambda s, x: grad_cam(nnx.merge(graphdef, s), x, layer="blocks.1", size=(8, 8))
    )
    np.testing.assert_allclose(jitted(state, X), eager, rtol=1e-5, atol=1e-7)
    nnx_jitted = nnx.jit(lambda m, x: grad_cam(m, x, layer="blocks.1", size=(8, 8)))
    np.testing.assert_allclose(nnx_jitted(model, X), eager, rtol=1e-5, atol=1e-7)
    per_example = jax.vmap(lambda x: grad_cam(model, x[None], layer="blocks.1", size=(8, 8))[0])(X)
    np.testing.assert_allclose(per_example, eager, rtol=1e-5, atol=1e-7)
    cams = jax.jit(jax.vmap(lambda f: class_activation_maps(f[None], W, size=(8, 10))[0]))(F)
    np.testing.assert_allclose(
        cams, class_activation_maps(F, W, size=(8, 10)), rtol=1e-5, atol=1e-6
    )


def test_errors(model):
    with pytest.raises(ValueError, match="weights of shape"):
        class_activation_maps(F, W.T)
    with pytest.raises(ValueError, match=r"no layer 'blocks\.7'"):
        grad_cam(model, X, layer="blocks.7")
    with pytest.raises(ValueError, match="no layer 'head_layer'"):
        grad_cam(model, X, layer="head_layer")
    with pytest.raises(ValueError, match="target must be"):
        grad_cam_from_head(linear_head, F, target=jnp.array([0.5]))
    with pytest.raises(ValueError, match="one length per spatial axis"):
        upsample(F, (8,))
