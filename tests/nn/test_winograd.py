"""gapjax.nn._winograd: F(4 x 4, r x r) convolutions against a float64 NumPy reference.

The transforms are checked on their defining identity (a 1-D correlation, exact in float64);
the convolution, its input gradient and its kernel gradient against a direct float64
convolution written here, over kernel sizes 3 and 5 (square and mixed), odd sizes that leave
partial tiles, symmetric, asymmetric, zero and negative (cropping) padding; and the routing of
``gapjax.nn.conv_general_dilated`` to it on CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from gapjax import nn
from gapjax.nn import _winograd, conv

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("r", _winograd.KERNEL_SIZES)
def test_transforms_compute_a_correlation_exactly(r):
    m = _winograd.TILE
    a_t, g, b_t = _winograd.transforms(m, r)
    a = m + r - 1
    assert a_t.shape == (m, a) and g.shape == (a, r) and b_t.shape == (a, a)
    rng = np.random.default_rng(r)
    for _ in range(5):
        d, k = rng.normal(size=m + r - 1), rng.normal(size=r)
        want = np.array([k @ d[i : i + r] for i in range(m)])
        np.testing.assert_allclose(a_t @ ((g @ k) * (b_t @ d)), want, rtol=0, atol=1e-12)
    # B^T scaled to small integers (the interpolation's fractions live in G).
    np.testing.assert_array_equal(b_t, np.round(b_t))


def _pad(x, pads):
    lo = [max(p, 0) for p, _ in pads]
    hi = [max(p, 0) for _, p in pads]
    x = np.pad(x, ((0, 0), (lo[0], hi[0]), (lo[1], hi[1]), (0, 0)))
    crop = [(-min(p, 0), x.shape[1 + i] + min(q, 0)) for i, (p, q) in enumerate(pads)]
    return x[:, crop[0][0] : crop[0][1], crop[1][0] : crop[1][1]]


def _forward(x, w, pads):
    """Direct float64 convolution (a sum over the kernel's taps)."""
    xp = _pad(np.asarray(x, np.float64), pads)
    rh, rw = w.shape[:2]
    oh, ow = xp.shape[1] - rh + 1, xp.shape[2] - rw + 1
    y = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
    for i in range(rh):
        for j in range(rw):
            y += xp[:, i : i + oh, j : j + ow] @ np.asarray(w[i, j], np.float64)
    return y


def _reference(x, w, pads, dy):
    """Direct float64 convolution and its two gradients (sums over taps, written out)."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    xp = _pad(x, pads)
    rh, rw = w.shape[:2]
    oh, ow = xp.shape[1] - rh + 1, xp.shape[2] - rw + 1
    y = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(rh):
        for j in range(rw):
            patch = xp[:, i : i + oh, j : j + ow]
            y += patch @ w[i, j]
            dxp[:, i : i + oh, j : j + ow] += dy @ w[i, j].T
            dw[i, j] = np.einsum("nhwc,nhwo->co", patch, dy)
    # dx: the padded input's gradient, cropped (or zero-extended) back to the input.
    dx = np.zeros_like(x)
    top, left = pads[0][0], pads[1][0]
    for h in range(x.shape[1]):
        for v in range(x.shape[2]):
            hp, vp = h + top, v + left
            if 0 <= hp < dxp.shape[1] and 0 <= vp < dxp.shape[2]:
                dx[:, h, v] = dxp[:, hp, vp]
    return y, dx, dw


CASES = [
    # (input h, w), kernel (rh, rw), pads
    ((8, 8), (3, 3), ((1, 1), (1, 1))),
    ((7, 9), (3, 3), ((1, 1), (1, 1))),
    ((13, 13), (5, 5), ((2, 2), (2, 2))),
    ((16, 16), (5, 5), ((2, 2), (2, 2))),
    ((8, 6), (3, 5), ((0, 2), (2, -1))),
    ((5, 5), (5, 3), ((0, 0), (0, 0))),
    ((11, 4), (5, 5), ((3, 1), (0, 4))),
    ((6, 10), (3, 3), ((-1, 2), (0, 0))),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_convolution_and_gradients_match_a_float64_direct_convolution(case):
    (h, w), kernel, pads = case
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, h, w, 24)).astype(np.float32)
    k = (rng.normal(size=(*kernel, 24, 20)) / np.sqrt(np.prod(kernel) * 24)).astype(np.float32)
    dy = rng.normal(size=_forward(x, k, pads).shape).astype(np.float32)
    want = _reference(x, k, pads, dy)

    @jax.jit
    def value_and_grads(x, k, dy):
        y, vjp = jax.vjp(lambda x, k: _winograd.conv2d(x, k, pads), x, k)
        return (y, *vjp(dy))

    got = value_and_grads(x, k, dy)
    for name, a, b in zip(("value", "d input", "d kernel"), got, want, strict=True):
        assert a.shape == b.shape and a.dtype == jnp.float32, name
        # The transforms' float32 rounding, relative to the array's scale (a direct float32
        # convolution is within ~1e-6 of it; Winograd's points +-2, +-1/2 cost a few more bits).
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale, err_msg=name)


def test_jit_vmap_and_second_order():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 3, 9, 9, 20)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 20, 8)) / 13.0, jnp.float32)
    pads = ((1, 1), (1, 1))
    batched = jax.jit(jax.vmap(lambda x: _winograd.conv2d(x, k, pads)))(x)
    for i in range(2):
        np.testing.assert_allclose(
            batched[i],
            lax.conv_general_dilated(x[i], k, (1, 1), pads, dimension_numbers=DN),
            rtol=0,
            atol=2e-5 * float(jnp.abs(batched[i]).max()),
        )

    # Second order through the hand-written gradient: d/dk of |d conv / dx|^2 equals lax's.
    def curvature(fn):
        def inner(k):
            g = jax.grad(lambda x: jnp.sum(jnp.sin(fn(x, k))))(x[0])
            return jnp.sum(g**2)

        return jax.jit(jax.grad(inner))(k)

    ours = curvature(lambda x, k: _winograd.conv2d(x, k, pads))
    theirs = curvature(
        lambda x, k: lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=DN)
    )
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * float(jnp.abs(theirs).max()))


def _args(cin, kernel=(3, 3), dtype=jnp.float32, spatial=(8, 8)):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *spatial, cin)), dtype)
    k = jnp.asarray(rng.normal(size=(*kernel, cin, 6)) / 10.0, dtype)
    return x, k, {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": DN}


@pytest.mark.parametrize(
    ("cin", "kernel", "extra", "dtype", "winograd"),
    [
        (32, (3, 3), {}, jnp.float32, True),
        (32, (5, 5), {}, jnp.float32, True),
        (32, (5, 3), {}, jnp.float32, True),
        (8, (3, 3), {}, jnp.float32, False),  # an image's few channels: im2col
        (32, (7, 7), {}, jnp.float32, False),  # no transform for 7: XLA's convolution
        (32, (3, 3), {"window_strides": (2, 2)}, jnp.float32, False),
        (32, (3, 3), {"precision": lax.Precision.HIGHEST}, jnp.float32, False),
        (32, (3, 3), {}, jnp.bfloat16, False),
    ],
)
def test_cpu_routes_wide_stride_one_3x3_and_5x5_float32_convolutions_to_winograd(
    cin, kernel, extra, dtype, winograd
):
    x, k, kwargs = _args(cin, kernel, dtype)
    kwargs.update(extra)
    fwd = jax.jit(lambda x, k: conv._cpu(x, k, **kwargs))
    text = fwd.lower(x, k).as_text()
    assert ("stablehlo.convolution" not in text) == (winograd or cin <= conv._IM2COL_MAX_IN)
    assert (
        conv._winograd_applies(x, k, tuple(kwargs["window_strides"]), kwargs.get("precision"), None)
        == winograd
    )
    np.testing.assert_allclose(
        np.asarray(fwd(x, k), np.float32),
        np.asarray(lax.conv_general_dilated(x, k, **kwargs), np.float32),
        rtol=2e-2 if dtype == jnp.bfloat16 else 0,
        atol=2e-2 if dtype == jnp.bfloat16 else 2e-5 * float(jnp.abs(fwd(x, k)).max()),
    )


def test_public_function_keeps_native_convolution_on_gpu_and_tpu():
    x, k, kwargs = _args(32)
    fn = jax.jit(jax.grad(lambda x, k: jnp.sum(nn.conv_general_dilated(x, k, **kwargs) ** 2)))
    assert "convolution" not in fn.lower(x, k).as_text()  # on CPU: Winograd
    for platform in ("cuda", "tpu"):
        text = jax.export.export(fn, platforms=(platform,))(x, k).mlir_module()
        assert "stablehlo.convolution" in text and "custom_call" not in text
