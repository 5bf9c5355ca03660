"""Caffe's SGD against a NumPy transcription of Caffe's update; multipliers; schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gapjax.models import nin
from gapjax.train import caffe_sgd, learning_rate_schedule, lr_multipliers


def caffe_reference(params, grads_seq, lrs, mults, wd, momentum):
    """Caffe's SGDSolver: v = momentum v + lr * mult * (g + wd * decay_mult * w); w -= v."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for g, lr in zip(grads_seq, lrs, strict=True):
        for k in params:
            decay = 0.0 if k.endswith("bias") else wd
            v[k] = momentum * v[k] + lr * mults[k] * (g[k] + decay * params[k])
            params[k] = params[k] - v[k]
    return params


def test_caffe_sgd_matches_caffe_update_rule():
    rng = np.random.default_rng(0)
    params = {
        "conv_kernel": rng.normal(size=3),
        "conv_bias": rng.normal(size=3),
        "fc_kernel": rng.normal(size=2),
    }
    grads_seq = [{k: rng.normal(size=p.shape) for k, p in params.items()} for _ in range(5)]
    mults = {"conv_kernel": 1.0, "conv_bias": 2.0, "fc_kernel": 0.1}
    schedule = optax.piecewise_constant_schedule(0.1, {2: 0.1})  # a step down after 2 updates
    lrs = [float(schedule(i)) for i in range(5)]

    def nest(flat):  # {"conv_bias": v} -> {"conv": {"bias": v}}: caffe_sgd reads path names
        out = {}
        for k, v in flat.items():
            layer, name = k.split("_")
            out.setdefault(layer, {})[name] = jnp.asarray(v, jnp.float32)
        return out

    tx = caffe_sgd(schedule, momentum=0.9, weight_decay=1e-2, multipliers=nest(mults))
    p = nest(params)
    state = tx.init(p)
    for g in grads_seq:
        updates, state = tx.update(nest(g), state, p)
        p = optax.apply_updates(p, updates)
    want = caffe_reference(params, grads_seq, lrs, mults, 1e-2, 0.9)
    for k, v in want.items():
        layer, name = k.split("_")
        np.testing.assert_allclose(p[layer][name], v, rtol=1e-5)


def test_weight_decay_skips_biases_by_name():
    tx = caffe_sgd(1.0, momentum=0.0, weight_decay=0.5)
    params = {"layer": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_array_equal(updates["layer"]["kernel"], [-0.5, -0.5])
    np.testing.assert_array_equal(updates["layer"]["bias"], [0.0, 0.0])


def test_nin_multipliers_follow_the_reference_solver():
    """Weights 0.1, biases 0.2, the last 1x1 layer 0.01 / 0.02 (REFERENCE.md section 3)."""
    model = nnx.eval_shape(lambda: nin.nin_cifar10(rngs=nnx.Rngs(0)))
    params = nnx.split(model, nnx.Param, ...)[1]
    mults = lr_multipliers(
        params, bias_mult=2.0, last_layer=model.last_layer_path(), last_layer_mult=0.1
    )
    rates = {
        (block, layer, name): 0.1 * m
        for block in range(3)
        for layer in range(3)
        for name, m in (
            ("kernel", mults["blocks"][block]["layers"][layer]["kernel"]),
            ("bias", mults["blocks"][block]["layers"][layer]["bias"]),
        )
    }
    assert rates[(2, 2, "kernel")] == pytest.approx(0.01) and rates[
        (2, 2, "bias")
    ] == pytest.approx(0.02)
    others = {k: v for k, v in rates.items() if k[:2] != (2, 2)}
    assert {round(v, 6) for k, v in others.items() if k[2] == "kernel"} == {0.1}
    assert {round(v, 6) for k, v in others.items() if k[2] == "bias"} == {0.2}
    fc = nnx.eval_shape(lambda: nin.nin_cifar10(head="fc", rngs=nnx.Rngs(0)))
    fc_mults = lr_multipliers(nnx.split(fc, nnx.Param, ...)[1], last_layer=fc.last_layer_path())
    assert fc_mults["fc"]["kernel"] == pytest.approx(0.1)
    assert fc_mults["blocks"][2]["layers"][2]["kernel"] == 1.0


def test_schedules():
    step = learning_rate_schedule(
        0.1, schedule="step", steps_per_epoch=4, epochs=10, boundaries=(5, 8)
    )
    assert [float(step(s)) for s in (0, 19, 20, 31, 32)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001]
    )
    cosine = learning_rate_schedule(1.0, schedule="cosine", steps_per_epoch=10, epochs=2)
    assert float(cosine(0)) == pytest.approx(1.0) and float(cosine(10)) == pytest.approx(0.5)
    assert float(cosine(20)) == pytest.approx(0.0, abs=1e-7)
    warm = learning_rate_schedule(
        0.2, schedule="constant", steps_per_epoch=10, epochs=5, warmup_epochs=1
    )
    assert [float(warm(s)) for s in (0, 5, 10, 30)] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    warm_step = learning_rate_schedule(
        0.1, schedule="step", steps_per_epoch=10, epochs=5, boundaries=(3,), warmup_epochs=1
    )
    assert [float(warm_step(s)) for s in (10, 29, 30)] == pytest.approx([0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="schedule must be"):
        learning_rate_schedule(0.1, schedule="exp", steps_per_epoch=1, epochs=1)


NON_FINITE_OR_NEGATIVE = (float("nan"), float("inf"), -1.0)


@pytest.mark.parametrize(
    "call, name, values",
    [
        (lambda v: caffe_sgd(0.1, momentum=v), "momentum", (*NON_FINITE_OR_NEGATIVE, 1.0, True)),
        (lambda v: caffe_sgd(0.1, weight_decay=v), "weight_decay", (*NON_FINITE_OR_NEGATIVE, True)),
        (lambda v: caffe_sgd(v), "learning_rate", NON_FINITE_OR_NEGATIVE),  # bool: annotation
        (lambda v: lr_multipliers({}, bias_mult=v), "bias_mult", (*NON_FINITE_OR_NEGATIVE, True)),
        (
            lambda v: lr_multipliers({}, last_layer_mult=v),
            "last_layer_mult",
            NON_FINITE_OR_NEGATIVE,
        ),
        (lambda v: _schedule(base_lr=v), "base_lr", (*NON_FINITE_OR_NEGATIVE, True)),
        (lambda v: _schedule(decay=v), "decay", (*NON_FINITE_OR_NEGATIVE, True)),
        (lambda v: _schedule(warmup_epochs=v), "warmup_epochs", (*NON_FINITE_OR_NEGATIVE, True)),
    ],
)
def test_bad_hyperparameters_raise_naming_them(call, name, values):
    """Issue 20's class: NaN, inf, negatives and bools are rejected before any update."""
    for value in values:
        with pytest.raises(ValueError, match=rf": {name}={value!r} must be"):
            call(value)


def _schedule(**kwargs):
    settings = {"base_lr": 0.1, "schedule": "step", "steps_per_epoch": 10, "epochs": 5}
    return learning_rate_schedule(**{**settings, **kwargs})


def test_schedule_counts_and_boundaries_are_checked():
    with pytest.raises(ValueError, match="steps_per_epoch=0 must be an int >= 1"):
        _schedule(steps_per_epoch=0)
    with pytest.raises(ValueError, match="epochs=True must be an int >= 1"):
        _schedule(epochs=True)
    with pytest.raises(ValueError, match=r"boundaries=\(3, 2\) must be increasing"):
        _schedule(boundaries=(3, 2))
    with pytest.raises(ValueError, match=r"boundaries=-1 must be finite"):
        _schedule(boundaries=(2, -1))
    caffe_sgd(jnp.asarray(0.1))  # a scalar array is a number
