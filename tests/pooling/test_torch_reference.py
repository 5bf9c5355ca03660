"""gapjax against PyTorch: values recorded from torch 2.13.0+cpu, and live checks when installed.

The recorded values come from this input (NCHW for PyTorch; the test transposes it for
channels_last) and these calls, run with torch 2.13.0+cpu on 2026-11-23:

    x = (2 * np.sin(np.arange(120) * 0.7)).reshape(2, 3, 4, 5).astype(np.float32)
    F.adaptive_avg_pool2d(t, 1), F.adaptive_max_pool2d(t, 1), F.lp_pool2d(t, 2.0, (4, 5)),
    F.lp_pool2d(t.abs(), 3.0, (4, 5)),
    F.avg_pool2d(t.clamp(min=1e-6).pow(3.0), (4, 5)).pow(1 / 3)   # cirtorch's GeM
    (torch.logsumexp(2.0 * t.flatten(2), -1) - log(20)) / 2.0       # LSE, r = 2
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gapjax

X = (2 * np.sin(np.arange(2 * 3 * 4 * 5) * 0.7)).reshape(2, 3, 4, 5).astype(np.float32)

RECORDED = {
    "avg": [
        [0.06871555745601654, 0.1865682601928711, -0.017693912610411644],
        [-0.19140706956386566, -0.034651052206754684, 0.18193092942237854],
    ],
    "max": [
        [1.9763364791870117, 1.9892895221710205, 1.995114803314209],
        [1.998684048652649, 1.9999929666519165, 1.999799370765686],
    ],
    "lp2": [
        [6.141315460205078, 6.538857936859131, 6.080877304077148],
        [6.562248706817627, 6.0930938720703125, 6.516927242279053],
    ],
    "lp3_abs": [
        [3.986719846725464, 4.191469669342041, 3.953782081604004],
        [4.204901695251465, 3.9605917930603027, 4.178643703460693],
    ],
    "gem3": [
        [1.1802797317504883, 1.2922650575637817, 1.1527583599090576],
        [1.1507338285446167, 1.151346206665039, 1.2855924367904663],
    ],
    "lse2": [
        [1.1957879066467285, 1.3290989398956299, 1.1663155555725098],
        [1.158766746520996, 1.1641192436218262, 1.3224716186523438],
    ],
}

GAPJAX = {
    "avg": lambda x, **kw: gapjax.global_avg_pool(x, **kw),
    "max": lambda x, **kw: gapjax.global_max_pool(x, **kw),
    "lp2": lambda x, **kw: gapjax.global_lp_pool(x, 2.0, **kw),
    "lp3_abs": lambda x, **kw: gapjax.global_lp_pool(jnp.abs(x), 3.0, **kw),
    "gem3": lambda x, **kw: gapjax.gem_pool(x, 3.0, **kw),
    "lse2": lambda x, **kw: gapjax.lse_pool(x, 2.0, **kw),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_matches_values_recorded_from_pytorch(name):
    want = np.asarray(RECORDED[name], np.float32)
    np.testing.assert_allclose(
        GAPJAX[name](X, data_format="channels_first"), want, rtol=2e-6, atol=1e-6
    )
    np.testing.assert_allclose(GAPJAX[name](X.transpose(0, 2, 3, 1)), want, rtol=2e-6, atol=1e-6)


def test_max_tie_gradient_follows_pytorch():
    # PyTorch 2.13.0: adaptive_max_pool2d sends the whole gradient to the first of the tied
    # maxima in row-major order: [[0, 1], [0, 0]] for this input. So do gapjax's global max
    # (masked or not), global min, and max_pool with a full window.
    x = jnp.array([[[1.0, 3.0], [3.0, 0.0]]])[..., None]
    want = [[0.0, 1.0], [0.0, 0.0]]
    for fn in (
        gapjax.global_max_pool,
        lambda x: gapjax.global_max_pool(x, mask=jnp.ones((1, 2, 2), bool)),
        lambda x: -gapjax.global_min_pool(-x),
        lambda x: gapjax.max_pool(x, 2),
    ):
        g = jax.grad(lambda x, fn=fn: fn(x).sum())(x)
        np.testing.assert_array_equal(g[0, ..., 0], want)


@pytest.fixture
def torch():
    """PyTorch, or a skip when it is not installed (it is never a dependency)."""
    return pytest.importorskip("torch")


@pytest.mark.parametrize("shape", [(3, 5, 7, 4), (2, 1, 9, 3), (4, 6, 6, 2)])
def test_live_against_pytorch(torch, shape):
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape).astype(np.float32)  # NCHW
    t = torch.from_numpy(x).requires_grad_(True)
    pairs = [
        (F.adaptive_avg_pool2d(t, 1), gapjax.global_avg_pool),
        (F.adaptive_max_pool2d(t, 1), gapjax.global_max_pool),
        (F.lp_pool2d(t, 2.0, shape[2:]), lambda x, **kw: gapjax.global_lp_pool(x, 2.0, **kw)),
    ]
    cotangent = rng.normal(size=shape[:2]).astype(np.float32)
    for out, fn in pairs:
        (grad_t,) = torch.autograd.grad(out.flatten(1), t, torch.from_numpy(cotangent))
        y, vjp = jax.vjp(lambda x, fn=fn: fn(x, data_format="channels_first"), x)
        np.testing.assert_allclose(y, out.detach().flatten(1).numpy(), rtol=2e-6, atol=2e-6)
        # Random inputs have no ties, so even max pooling's gradients agree.
        np.testing.assert_allclose(vjp(cotangent)[0], grad_t.numpy(), rtol=2e-6, atol=2e-6)
