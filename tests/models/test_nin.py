"""NIN: the paper's parameter counts and spatial sizes, heads, dropout, init, transformations."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gapjax
from gapjax import nn
from gapjax.models import nin


def abstract(name, **kw):
    """The model's structure without running its initializers."""
    return nnx.eval_shape(lambda: nin.nin(name, rngs=nnx.Rngs(0), **kw))


# REFERENCE.md section 3.
@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("cifar10", 966_986),
        ("cifar100", 984_356),
        ("svhn", 1_986_026),
        ("mnist", 349_674),
        ("cifar10_caffe", 966_986),
    ],
)
def test_parameter_counts(name, count):
    assert nin.param_count(abstract(name)) == count


def test_gap_head_adds_no_parameters_and_fc_heads_do():
    blocks_only = sum(nin.param_count(b) for b in abstract("cifar10").blocks)
    assert blocks_only == nin.param_count(abstract("cifar10")) == 966_986
    fc = nin.param_count(abstract("cifar10", head="fc"))
    assert fc == 966_986 + 8 * 8 * 10 * 10 + 10
    assert nin.param_count(abstract("cifar10", head="fc_dropout")) == fc


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("cifar10", [32, 16, 8]),
        ("cifar10_caffe", [32, 16, 8]),
        ("svhn", [32, 16, 8]),
        ("mnist", [28, 14, 7]),
    ],
)
def test_spatial_size_after_each_block(name, sizes):
    spec = nin.SPECS[name]
    assert spec.spatial_sizes() == sizes
    model = abstract(name)
    x = jax.ShapeDtypeStruct((2, *spec.input_shape), jnp.float32)
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x, return_intermediates=True), state, x
    )
    logits, extra = out
    assert [b.shape[1] for b in extra["blocks"]] == sizes
    assert [b.shape[-1] for b in extra["blocks"]] == [b.features[-1] for b in spec.blocks]
    assert extra["maps"].shape == (2, sizes[-1], sizes[-1], spec.num_classes)
    assert logits.shape == (2, spec.num_classes)


def test_architecture_matches_the_reference_table():
    spec = nin.SPECS["cifar10"]
    assert [(b.kernel_size, b.features) for b in spec.blocks] == [
        (5, (192, 160, 96)),
        (5, (192, 192, 192)),
        (3, (192, 192, 10)),
    ]
    assert spec.pools == ("max", "max") and nin.SPECS["cifar10_caffe"].pools == ("max", "avg")
    assert spec.dropout == 0.5
    model = abstract("cifar10")
    conv1 = model.blocks[0].layers[0]
    assert conv1.kernel_size == (5, 5) and conv1.padding == [(2, 2), (2, 2)]
    assert model.blocks[2].layers[0].padding == [(1, 1), (1, 1)]
    assert isinstance(model.pools[1], nn.MaxPool)
    assert isinstance(abstract("cifar10_caffe").pools[1], nn.AvgPool)


def test_initialization():
    model = nin.nin_cifar100(rngs=nnx.Rngs(0))
    stds = [float(jnp.std(layer.kernel[...])) for b in model.blocks for layer in b.layers]
    np.testing.assert_allclose(stds[:3], [0.001, 0.01, 0.01], rtol=0.1)
    np.testing.assert_allclose(stds[3:], 0.05, rtol=0.1)
    biases = [layer.bias[...] for b in model.blocks for layer in b.layers]
    assert all(np.all(np.asarray(b) == 0) for b in biases)


@functools.cache
def digits_model(head="gap"):
    return nin.nin_digits(head=head, rngs=nnx.Rngs(0))


X = jnp.asarray(np.random.default_rng(0).uniform(0, 16, size=(4, 8, 8, 1)), jnp.float32)


def reference_forward(model, x, *, train_masks=None):
    """NIN by hand from the functional API: blocks, Caffe 3x3/2 pools, ReLU, GAP."""
    for i, block in enumerate(model.blocks):
        for layer in block.layers:
            x = jax.nn.relu(
                jax.lax.conv_general_dilated(
                    x,
                    layer.kernel[...],
                    (1, 1),
                    layer.padding,
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )
                + layer.bias[...]
            )
        if i < len(model.pools):
            x = gapjax.max_pool(x, 3, stride=2, convention="caffe")
    return gapjax.global_avg_pool(x)


def test_eval_forward_equals_functional_reference_and_is_deterministic():
    model = digits_model()
    model.eval()
    np.testing.assert_allclose(model(X), reference_forward(model, X), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model(X), model(X))


def test_dropout_in_training_only():
    model = nin.nin_digits(rngs=nnx.Rngs(0))
    model.train()
    a, b = model(X), model(X)
    assert not np.allclose(a, b)  # a new dropout mask each call
    model.eval()
    assert not np.allclose(a, model(X))
    # Dropout sits after block 1 (the pool's output), not inside the blocks.
    model.train()
    _, extra = model(X, return_intermediates=True)
    model.eval()
    _, clean = model(X, return_intermediates=True)
    np.testing.assert_array_equal(extra["blocks"][0], clean["blocks"][0])
    assert not np.allclose(extra["blocks"][1], clean["blocks"][1])


def test_intermediates_and_gap_identity():
    model = digits_model()
    model.eval()
    logits, extra = model(X, return_intermediates=True)
    np.testing.assert_allclose(logits, extra["maps"].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_array_equal(extra["pooled"], logits)
    np.testing.assert_allclose(model.head(model.features(X)), logits, rtol=1e-6)
    assert np.all(np.asarray(extra["maps"]) >= 0)  # ReLU on the last 1x1 layer


def test_fc_heads():
    model = nin.nin_digits(head="fc_dropout", rngs=nnx.Rngs(0))
    model.eval()
    logits, extra = model(X, return_intermediates=True)
    assert extra["pooled"].shape == (4, 4 * 4 * 10)
    np.testing.assert_allclose(
        logits, extra["pooled"] @ model.fc.kernel[...] + model.fc.bias[...], rtol=1e-5, atol=1e-6
    )
    model.train()
    assert model.fc_dropout.rate == 0.5
    assert nin.nin_digits(head="fc", rngs=nnx.Rngs(0)).fc_dropout.rate == 0.0
    with pytest.raises(ValueError, match="fully connected head was built for 4x4"):
        model.head(jnp.zeros((1, 5, 5, 10)))


def test_any_global_pool_as_head():
    model = nin.nin_digits(head=nn.GeMPool(channels=10), rngs=nnx.Rngs(0))
    model.eval()
    logits, extra = model(X, return_intermediates=True)
    np.testing.assert_allclose(logits, gapjax.gem_pool(extra["maps"], 3.0), rtol=1e-5)
    assert nin.param_count(model) == nin.param_count(digits_model()) + 10
    topk = nin.nin_digits(head=functools.partial(gapjax.topk_pool, k=2), rngs=nnx.Rngs(0))
    topk.eval()
    logits, extra = topk(X, return_intermediates=True)
    np.testing.assert_allclose(logits, gapjax.topk_pool(extra["maps"], 2), rtol=1e-6)


def test_jit_via_split_merge_vmap_and_bfloat16():
    model = digits_model()
    model.eval()
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    np.testing.assert_allclose(jitted(state, X), model(X), rtol=1e-5, atol=1e-6)
    per_example = jax.vmap(lambda x: nnx.merge(graphdef, state)(x[None])[0])(X)
    np.testing.assert_allclose(per_example, model(X), rtol=1e-5, atol=1e-5)
    low = nin.nin_digits(dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    low.eval()
    logits, extra = low(X, return_intermediates=True)
    assert logits.dtype == jnp.float32 and extra["maps"].dtype == jnp.bfloat16
    assert jax.tree.leaves(nnx.state(low, nnx.Param))[0].dtype == jnp.float32
    np.testing.assert_allclose(logits, model(X), rtol=0.1, atol=0.05)


def test_parameters_receive_gradients():
    model = nin.nin_digits(rngs=nnx.Rngs(1))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    labels = jnp.arange(4)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(X)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    grads = jax.tree.leaves(jax.grad(loss)(params))
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert all(np.any(np.asarray(g) != 0) for g in grads)


def test_errors():
    model = digits_model()
    with pytest.raises(ValueError, match=r"\(batch, height, width, 1\)"):
        model(jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="head must be one of"):
        nin.nin_digits(head="gmp", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown architecture"):
        nin.nin("imagenet", rngs=nnx.Rngs(0))
    bad = nin.NINSpec("bad", (8, 8, 1), nin.SPECS["digits"].blocks, ("max", "max"))
    with pytest.raises(ValueError, match="one pool"):
        nin.NIN(bad, rngs=nnx.Rngs(0))


def _with_nnx_convolutions(model):
    """The model as it was before gapjax.nn.Conv: every layer on lax.conv_general_dilated."""
    reference = nnx.clone(model)
    for block in reference.blocks:
        for layer in block.layers:
            layer.conv_general_dilated = jax.lax.conv_general_dilated
    return reference


def test_cifar10_forward_and_gradients_match_the_nnx_conv_implementation():
    model = nin.nin_cifar10(rngs=nnx.Rngs(0))
    model.eval()
    reference = _with_nnx_convolutions(model)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    np.testing.assert_allclose(model(x), reference(x), rtol=1e-5, atol=1e-6)

    def loss(m):
        return jnp.sum(m(x) * jnp.arange(10.0))

    grads = jax.jit(nnx.grad(loss))(model)
    ref_grads = jax.jit(nnx.grad(loss))(reference)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        # conv2 and conv3 run as Winograd on CPU: float32 rounding up to ~1e-5 of the scale.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * float(jnp.max(jnp.abs(b))))


def test_forward_and_gradient_export_for_cpu_cuda_and_tpu():
    model = digits_model()
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def forward(params, x):
        return nnx.merge(graphdef, params, rest)(x)

    def gradient(params, x):
        return jax.grad(lambda p: jnp.sum(forward(p, x) ** 2))(params)

    for fn in (forward, gradient):
        exported = jax.export.export(jax.jit(fn), platforms=("cpu", "cuda", "tpu"))(params, X)
        assert "custom_call" not in exported.mlir_module()
    got, want = exported.call(params, X), jax.jit(gradient)(params, X)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rate", [1.5, 1.0, -0.1, float("nan"), True, "0.5"])
def test_impossible_dropout_rate_is_refused_when_built(rate):
    # Under the suite's runtime type checker a rate that is not a float (True, "0.5") is caught
    # by NINSpec's annotation; NIN itself checks the range (and the type, without the checker).
    with pytest.raises((ValueError, TypeError), match=r"dropout"):
        spec = dataclasses.replace(nin.SPECS["digits"], dropout=rate)
        nin.NIN(spec, rngs=nnx.Rngs(0))
    if isinstance(rate, float):
        spec = dataclasses.replace(nin.SPECS["digits"], dropout=rate)
        with pytest.raises(ValueError, match=r"NIN: spec.dropout .*\[0, 1\)"):
            nin.NIN(spec, rngs=nnx.Rngs(0))
