"""Every public pooling function and the NIN training step export for CPU, GPU and TPU at once.

``jax.export`` with ``platforms=("cpu", "cuda", "tpu")`` lowers the program for each platform on
this CPU-only machine (``lax.platform_dependent`` branches included) and refuses custom calls
without compatibility guarantees, so these tests keep compiled extensions and FFI calls out of
the package for good. The exported programs are also run here and compared with the jitted
originals.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import gapjax
from gapjax.train import (
    TrainState,
    build_model,
    build_optimizer,
    default_config,
    make_mesh,
    make_train_step,
)

PLATFORMS = ("cpu", "cuda", "tpu")
KEY = jax.random.key(0)
X = jax.random.normal(KEY, (2, 6, 7, 4))  # (batch, height, width, channels)
WEIGHTS = jax.random.uniform(jax.random.key(1), (2, 6, 7))
MASK = jnp.arange(42).reshape(1, 6, 7) % 5 != 0

# name -> x -> pooled array (each public function, with the arguments that reach its branches).
POOLS = {
    "global_avg_pool": lambda x: gapjax.global_avg_pool(x, mask=MASK),
    "global_sum_pool": lambda x: gapjax.global_sum_pool(x),
    "global_max_pool": lambda x: gapjax.global_max_pool(x),
    "global_max_pool_cf": lambda x: gapjax.global_max_pool(
        jnp.moveaxis(x, -1, 1), data_format="channels_first"
    ),
    "global_min_pool": lambda x: gapjax.global_min_pool(x, mask=MASK),
    "global_lp_pool": lambda x: gapjax.global_lp_pool(x, 2.0),
    "gem_pool": lambda x: gapjax.gem_pool(x, p=3.0),
    "lse_pool": lambda x: gapjax.lse_pool(x, 5.0),
    "topk_pool": lambda x: gapjax.topk_pool(x, 0.2, k_min=0.2, alpha=0.7),
    "mixed_pool": lambda x: gapjax.mixed_pool(x, 0.3),
    "avgmax_pool": lambda x: gapjax.avgmax_pool(x),
    "catavgmax_pool": lambda x: gapjax.catavgmax_pool(x),
    "soft_pool": lambda x: gapjax.soft_pool(x),
    "weighted_avg_pool": lambda x: gapjax.weighted_avg_pool(x, WEIGHTS),
    "attention_pool": lambda x: gapjax.attention_pool(x, x[..., 0]),
    "global_stochastic_pool": lambda x: gapjax.global_stochastic_pool(x, key=KEY, train=True),
    "avg_pool": lambda x: gapjax.avg_pool(x, 3, stride=2, padding=1, ceil_mode=True),
    "max_pool": lambda x: gapjax.max_pool(x, 3, stride=2, convention="caffe"),
    "max_pool_indices": lambda x: gapjax.max_pool(x, 2, padding=1, return_indices=True)[0],
    "min_pool": lambda x: gapjax.min_pool(x, (2, 3), stride=1, dilation=(1, 2)),
    "lp_pool": lambda x: gapjax.lp_pool(x, 2.0, 2),
    "stochastic_pool": lambda x: gapjax.stochastic_pool(x, 2, key=KEY, train=True),
    "max_unpool": lambda x: gapjax.max_unpool(
        *gapjax.max_pool(x, 2, return_indices=True), 2, output_size=(6, 7)
    ),
    "adaptive_avg_pool": lambda x: gapjax.adaptive_avg_pool(x, (4, 3)),
    "adaptive_max_pool": lambda x: gapjax.adaptive_max_pool(x, (4, 3)),
}


def test_every_public_pooling_function_is_listed():
    covered = {name.removesuffix("_cf").removesuffix("_indices") for name in POOLS}
    assert covered == set(gapjax.pooling.__all__)


def _custom_call_targets(text: str) -> set[str]:
    return set(re.findall(r"custom_call @([\w.]+)", text)) | set(
        re.findall(r'call_target_name = "([^"]+)"', text)
    )


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pooling_forward_and_gradient_export(name):
    pool = POOLS[name]

    def forward(x):
        return pool(x)

    def gradient(x):
        return jax.grad(lambda v: jnp.sum(jnp.sin(pool(v).astype(jnp.float32))))(x)

    for fn in (forward, gradient):
        exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(X)
        assert exported.platforms == PLATFORMS
        assert not _custom_call_targets(exported.mlir_module()), name
        np.testing.assert_allclose(exported.call(X), jax.jit(fn)(X), rtol=1e-6, atol=1e-6)


def test_nin_training_step_exports():
    """The real training step of ``gapjax.train`` (augmentation, dropout, gradient with respect
    to the parameters, Caffe SGD) on the paper's CIFAR-10 architecture."""
    config = default_config()
    config.model = "cifar10"
    config.augment = True
    model = build_model(config, num_classes=10)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    _, tx = build_optimizer(config, params, model, steps_per_epoch=1)
    sharding = NamedSharding(make_mesh(), PartitionSpec("data"))
    step = make_train_step(graphdef, tx, config, sharding)
    state = TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))
    totals = {k: jnp.zeros(()) for k in ("loss", "correct", "count")}
    batch = {"images": jax.random.normal(KEY, (2, 32, 32, 3)), "labels": jnp.arange(2)}

    # TrainState is built inside the program: its type checks accept tracers, not the abstract
    # arguments that export passes around.
    def train_step(fields, totals, batch, key):
        new, totals = step(TrainState(*fields), totals, batch, key)
        return (new.step, new.params, new.rest, new.opt_state), totals

    fields = (state.step, state.params, state.rest, state.opt_state)
    exported = jax.export.export(jax.jit(train_step), platforms=PLATFORMS)(
        fields, totals, batch, KEY
    )
    # Only the sharding annotation, which every platform understands.
    assert _custom_call_targets(exported.mlir_module()) <= {"Sharding"}
    (new_step, new_params, _, _), new_totals = exported.call(fields, totals, batch, KEY)
    assert int(new_step) == 1 and float(new_totals["count"]) == 2.0
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.any(a != b), new_params, params))
    assert any(bool(m) for m in moved)
