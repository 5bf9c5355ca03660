"""Tests of the private reduction kernels behind global pooling (gapjax.pooling._kernels).

Every formulation (plain, batched dot, elementwise max trees, the reduce-max plus NaN check,
the first-maximum index pass) is checked against NumPy on shapes chosen to reach it,
with odd sizes and remainders. Gradients: sums and means against ``jax.grad`` of the plain ``jnp``
reductions; max against PyTorch's rule (the whole cotangent to the first maximum in row-major
order, or to the first NaN), written here as a gather at ``jnp.argmax`` and in NumPy.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gapjax.pooling import _kernels as K

F32_RTOL = 2e-6  # relative to sum(|x|): the rounding of any float32 summation order

# (name, shape, axes). Sizes are picked to reach each CPU formulation:
#   cl_dot*: channels last with >= 40K elements per batch -> batched dot (k > 1 widening, k = 1)
#   cl_small: channels last, small batches -> plain reduce; max -> one tree stage + finish
#   cf_many, cf_few: channels first (contiguous rows) -> plain reduce; max -> reduce + NaN check
#   1d / 3d: one and three spatial axes; noncontig: axes that do not collapse
#   unbatched: (H, W, C) pooled over (0, 1); tiny: below every threshold
CASES = [
    ("cl_dot_wide", (3, 20, 24, 90), (1, 2)),
    ("cl_dot_k1", (2, 17, 3, 2048), (1, 2)),
    ("cl_dot_odd", (5, 233, 181), (1,)),
    ("cl_small", (9, 7, 5, 130), (1, 2)),
    ("cf_many", (4, 70, 9, 11), (2, 3)),
    ("cf_few", (2, 5, 23, 19), (2, 3)),
    ("1d_cl", (6, 301, 24), (1,)),
    ("3d_cl", (2, 5, 6, 7, 48), (1, 2, 3)),
    ("3d_cf", (2, 40, 5, 6, 7), (2, 3, 4)),
    ("unbatched", (33, 35, 19), (0, 1)),
    ("noncontig", (4, 9, 5, 33), (1, 3)),
    ("size1_inside", (3, 21, 1, 17, 40), (1, 2, 3)),
    ("tiny", (2, 3, 4, 5), (1, 2)),
    ("cl_index_pass", (2, 60, 48, 48), (1, 2)),  # >= 2**18 elements: the chunked index pass
    ("cf_index_pass", (2, 48, 60, 48), (2, 3)),
]
IDS = [c[0] for c in CASES]


def _x(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _check_sum(out, x64, axes, scale=1.0):
    ref = x64.sum(axis=axes) * scale
    tol = F32_RTOL * np.abs(x64).sum(axis=axes) * scale + 1e-30
    assert out.shape == ref.shape
    assert np.all(np.abs(np.asarray(out, np.float64) - ref) <= tol)


@functools.partial(jax.jit, static_argnames="axes")
def _all(x, axes):
    return K.spatial_sum(x, axes), K.spatial_mean(x, axes), K.spatial_max(x, axes)


@pytest.mark.parametrize("name,shape,axes", CASES, ids=IDS)
def test_values_against_numpy(name, shape, axes):
    x = _x(shape)
    x64 = x.astype(np.float64)
    s, m, mx = _all(x, axes)
    assert s.dtype == m.dtype == mx.dtype == jnp.float32
    _check_sum(s, x64, axes)
    _check_sum(m, x64, axes, scale=1.0 / math.prod(shape[a] for a in axes))
    np.testing.assert_array_equal(mx, x.max(axis=axes))


def test_cases_reach_the_formulation_they_name():
    plans = {name: K._sum_plan(jnp.zeros(shape), axes) for name, shape, axes in CASES}
    dot = {"cl_dot_wide", "cl_dot_k1", "cl_dot_odd", "cl_index_pass"}
    assert {n for n, p in plans.items() if p == "dot"} == dot
    assert {n for n, p in plans.items() if p != "dot"} == {
        n for n, p in plans.items() if p == "plain"
    }


@pytest.mark.parametrize("name,shape,axes", CASES, ids=IDS)
def test_max_nan_and_inf(name, shape, axes):
    x = _x(shape, seed=1)
    ends = tuple(range(x.ndim - len(axes), x.ndim))
    xt = np.ascontiguousarray(np.moveaxis(x, axes, ends))  # (*kept, *pooled)
    flat = xt.reshape(-1, math.prod(shape[a] for a in axes))  # a view: one row per output
    n = flat.shape[1]
    # Row 0: one NaN at the last position (a remainder row); row 1: NaN first, and -NaN in row
    # 2; row 3: +inf and -inf together (max +inf); row 4: all -inf; row 5: NaN next to +inf.
    flat[0, n - 1] = np.nan
    if flat.shape[0] > 5:
        flat[1, 0] = np.nan
        flat[2, n // 2] = -np.nan
        flat[3, [0, n - 1]] = [np.inf, -np.inf]
        flat[4, :] = -np.inf
        flat[5, [n // 3, n // 3 + 1]] = [np.inf, np.nan]
    x = np.moveaxis(xt, ends, axes)
    out = np.asarray(_all(x, axes)[2])  # same shapes as above: no recompilation
    ref = np.max(x, axis=axes)  # NumPy propagates NaN
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(out[~np.isnan(ref)], ref[~np.isnan(ref)])
    assert np.isnan(ref).sum() >= 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name,shape,axes", [CASES[0], CASES[4], CASES[6]], ids=["cl", "cf", "1d"])
def test_half_precision(name, shape, axes, dtype):
    x = jnp.asarray(_x(shape, seed=2), dtype)
    x64 = np.asarray(x, np.float64)
    s, m, mx = _all(x, axes)
    assert s.dtype == m.dtype == jnp.float32  # accumulated and returned in float32
    assert mx.dtype == dtype
    _check_sum(s, x64, axes)
    _check_sum(m, x64, axes, scale=1.0 / math.prod(shape[a] for a in axes))
    np.testing.assert_array_equal(np.asarray(mx, np.float64), x64.max(axis=axes))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    "shape,axes", [((6, 40, 24, 33), (1, 2)), ((5, 33, 40, 24), (2, 3)), ((3, 4096), (1,))]
)
def test_half_precision_max_keeps_nan_anywhere(shape, axes, dtype):
    # 16-bit max is plain ``jnp.max`` on CPU, which XLA reduces in float32 and which keeps NaN
    # (float32's reduce-max does not): one NaN per output, at a random position of its window.
    rng = np.random.default_rng(13)
    x = _x(shape, seed=14)
    ends = tuple(range(x.ndim - len(axes), x.ndim))
    xt = np.ascontiguousarray(np.moveaxis(x, axes, ends))
    flat = xt.reshape(-1, math.prod(shape[a] for a in axes))
    flat[np.arange(flat.shape[0]), rng.integers(0, flat.shape[1], flat.shape[0])] = np.nan
    flat[0, :] = np.nan if flat.shape[0] > 1 else flat[0, :]
    x = np.moveaxis(xt, ends, axes)
    out = np.asarray(jax.jit(K.spatial_max, static_argnums=1)(jnp.asarray(x, dtype), axes))
    assert np.isnan(out).all()
    out = np.asarray(jax.jit(K.spatial_min, static_argnums=1)(jnp.asarray(x, dtype), axes))
    assert np.isnan(out).all()


def test_float64():
    with jax.enable_x64(True):
        x = _x((3, 20, 24, 40), seed=3, dtype=np.float64)
        s = K.spatial_sum(x, (1, 2))
        assert s.dtype == jnp.float64
        np.testing.assert_allclose(s, x.sum(axis=(1, 2)), rtol=1e-12)
        assert K.spatial_max(x, (1, 2)).dtype == jnp.float64


def _ties(shape, seed):
    """Small integers: many ties, and whole columns of equal values."""
    x = np.random.default_rng(seed).integers(-3, 4, size=shape).astype(np.float32)
    x.reshape(-1, shape[-1])[:, 0] = 1.0  # channel 0 (last axis) is constant
    return x


def _out(shape, axes):
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _pooled_last(x, axes):
    """x with the pooled axes moved last and flattened: (*kept, R), R in row-major order."""
    ends = tuple(range(x.ndim - len(axes), x.ndim))
    xt = jnp.moveaxis(x, axes, ends)
    return xt.reshape((*xt.shape[: x.ndim - len(axes)], -1))


def _first_winner_max(x, axes):
    """Reference max whose gradient goes to one winner: a gather at ``jnp.argmax`` (the first
    maximum, or the first NaN), independent of the kernels' index pass."""
    flat = _pooled_last(x, axes)
    index = jnp.argmax(flat, axis=-1)[..., None]
    return jnp.take_along_axis(flat, index, axis=-1)[..., 0]


def _numpy_max_grad(x, axes, w):
    """NumPy: d/dx sum(w * max(x)) under PyTorch's rule (first maximum, else first NaN)."""
    ends = tuple(range(x.ndim - len(axes), x.ndim))
    xt = np.moveaxis(x, axes, ends)
    flat = xt.reshape(-1, math.prod(xt.shape[x.ndim - len(axes) :]))
    nan = np.isnan(flat)
    index = np.where(nan.any(1), nan.argmax(1), np.argmax(np.where(nan, -np.inf, flat), 1))
    g = np.zeros_like(flat)
    g[np.arange(len(index)), index] = np.reshape(w, -1)
    return np.moveaxis(g.reshape(xt.shape), ends, axes)


GRAD_CASES = [
    c
    for c in CASES
    if c[0]
    in (
        "cl_dot_wide",
        "cl_dot_odd",
        "cl_small",
        "cf_many",
        "cf_few",
        "3d_cl",
        "noncontig",
        "tiny",
        "cl_index_pass",
        "cf_index_pass",
    )
]


@pytest.mark.parametrize("name,shape,axes", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradients_match_references(name, shape, axes):
    x = _ties(shape, seed=4)
    w = _x(_out(shape, axes), seed=5)

    @jax.jit
    def grads(x, w):
        def loss(mx, mean, sm):
            return lambda x: jnp.sum(w * jnp.sin(mx(x) + mean(x) + 0.1 * sm(x)))

        ours = jax.grad(
            loss(
                lambda x: K.spatial_max(x, axes),
                lambda x: K.spatial_mean(x, axes),
                lambda x: K.spatial_sum(x, axes),
            )
        )(x)
        ref = jax.grad(
            loss(
                lambda x: _first_winner_max(x, axes),
                lambda x: jnp.mean(x, axis=axes),
                lambda x: jnp.sum(x, axis=axes),
            )
        )(x)
        return ours, ref

    ours, ref = grads(x, w)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    # Max alone, in NumPy: ties (whole constant columns) send everything to the first one.
    g = jax.jit(jax.grad(lambda x: jnp.sum(w * K.spatial_max(x, axes))))(x)
    np.testing.assert_array_equal(g, _numpy_max_grad(x, axes, w))


@pytest.mark.parametrize(
    "shape,axes", [((2, 9, 8, 64), (1, 2)), ((2, 130, 4, 9), (2, 3))], ids=["cl", "cf"]
)
def test_forward_mode_and_second_order(shape, axes):
    x = _ties(shape, seed=6)
    t = _x(shape, seed=7)
    mine = {"max": K.spatial_max, "mean": K.spatial_mean, "sum": K.spatial_sum}
    plain = {
        "max": _first_winner_max,
        "mean": lambda x, a: jnp.mean(x, axis=a),
        "sum": lambda x, a: jnp.sum(x, axis=a),
    }

    @jax.jit
    def everything(x, t):
        out = {}
        for which, fns in (("ours", mine), ("ref", plain)):
            for name, red in fns.items():

                def f(x, red=red):
                    return jnp.sum(red(x * x, axes) ** 2)

                out[which, name, "jvp"] = jax.jvp(lambda x, red=red: red(x, axes), (x,), (t,))
                # Hessian-vector products: forward over reverse, reverse over reverse.
                out[which, name, "fwd_rev"] = jax.jvp(jax.grad(f), (x,), (t,))[1]
                out[which, name, "rev_rev"] = jax.grad(lambda x, f=f: jnp.vdot(jax.grad(f)(x), t))(
                    x
                )
        return out

    out = everything(x, t)
    for name in mine:
        for kind in ("jvp", "fwd_rev", "rev_rev"):
            np.testing.assert_allclose(
                np.concatenate([np.ravel(v) for v in jax.tree.leaves(out["ours", name, kind])]),
                np.concatenate([np.ravel(v) for v in jax.tree.leaves(out["ref", name, kind])]),
                rtol=1e-4,
                atol=1e-4,
                err_msg=f"{name} {kind}",
            )


@pytest.mark.parametrize(
    "shape,axes,first,second",
    [
        ((4, 70, 9, 11), (2, 3), (1, 3, 2, 2), (1, 3, 5, 7)),
        ((4, 9, 11, 70), (1, 2), (1, 2, 2, 3), (1, 5, 7, 3)),
    ],
    ids=["cf", "cl"],
)
def test_max_gradient_with_nan_and_ties_in_columns(shape, axes, first, second):
    # A NaN column takes the exact path: the gradient goes to its first NaN (PyTorch's index).
    x = _ties(shape, seed=8)
    x[first] = x[second] = np.nan
    w = _x(_out(shape, axes), seed=12)
    g = np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(w * K.spatial_max(x, axes))))(x))
    np.testing.assert_array_equal(g, _numpy_max_grad(x, axes, w))
    assert g[first] == w[1, 3] and g[second] == 0
    # Without NaN the fast path runs: the same rule.
    clean = np.where(np.isnan(x), 7.0, x)
    g = jax.jit(jax.grad(lambda x: jnp.sum(w * K.spatial_max(x, axes))))(clean)
    np.testing.assert_array_equal(g, _numpy_max_grad(clean, axes, w))


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=["cl", "cf"])
def test_vmap_and_jit(case):
    _, shape, axes = case
    xs = _ties((3, *shape), seed=9)

    @jax.jit
    def run(xs):
        out = {
            fn.__name__: jax.vmap(lambda x, fn=fn: fn(x, axes))(xs)
            for fn in (K.spatial_sum, K.spatial_mean, K.spatial_max)
        }
        # vmap of the gradient of max (the JVP rules under batching)
        out["grad"] = (
            jax.vmap(jax.grad(lambda x: jnp.sum(K.spatial_max(x, axes))))(xs),
            jax.vmap(jax.grad(lambda x: jnp.sum(_first_winner_max(x, axes))))(xs),
        )
        return out

    out = run(xs)
    big = tuple(a + 1 for a in axes)
    x64 = xs.astype(np.float64)
    _check_sum(out["spatial_sum"], x64, big)
    _check_sum(out["spatial_mean"], x64, big, scale=1.0 / math.prod(shape[a] for a in axes))
    np.testing.assert_array_equal(out["spatial_max"], xs.max(axis=big))
    np.testing.assert_allclose(*out["grad"])


def test_axes_forms_and_edge_cases():
    x = _x((2, 8, 9, 130), seed=10)

    @jax.jit
    def run(x):
        return (
            K.spatial_sum(x, [2, 1]),
            K.spatial_max(x, -1),
            K.spatial_sum(x, ()),
            K.spatial_max(x, ()),
        )

    s, mx, s0, m0 = run(x)
    _check_sum(s, x.astype(np.float64), (1, 2))
    np.testing.assert_array_equal(mx, x.max(axis=-1))
    np.testing.assert_array_equal(s0, x)  # no axes: the input itself
    np.testing.assert_array_equal(m0, x)
    empty = np.zeros((0, 5, 3), np.float32)
    assert K.spatial_sum(empty, (1,)).shape == (0, 3)
    assert K.spatial_max(empty, (1,)).shape == (0, 3)
    assert np.isnan(np.asarray(K.spatial_mean(np.zeros((2, 0, 3), np.float32), (1,)))).all()
    ints = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    np.testing.assert_array_equal(K.spatial_sum(ints, (1,)), ints.sum(axis=1))
    np.testing.assert_array_equal(K.spatial_max(ints, (1,)), ints.max(axis=1))


def test_private_formulations_directly():
    """Each CPU formulation on its own, so a change of heuristics cannot hide a broken one."""
    rng = np.random.default_rng(11)
    for P, R, Q in [(3, 480, 40), (1, 300, 7), (4, 2, 9)]:
        x3 = rng.standard_normal((P, R, Q)).astype(np.float32)
        x3[0, R - 1, 0] = np.nan
        clean = np.nan_to_num(x3)
        ref_max = x3.max(axis=1)

        ties = np.round(clean)  # many tied maxima per column

        @jax.jit
        def run(x3, clean, ties, ref_max, P=P, R=R, Q=Q):
            return (
                K._tree_max(x3),
                K._first_hit(ties, ties.max(axis=1)),
                K._first_hit(ties[..., 0], ties[..., 0].max(axis=1)),  # (P, R) rows
                K._first_max_or_nan(x3, ref_max),
                K._batched_dot_sum(clean, P, R, Q) if R >= 16 else None,
            )

        tmax, hit, hit2, exact, dot = run(x3, clean, ties, ref_max)
        np.testing.assert_array_equal(tmax, ref_max)
        np.testing.assert_array_equal(hit, np.argmax(ties, axis=1))
        np.testing.assert_array_equal(hit2, np.argmax(ties[..., 0], axis=1))
        want = np.argmax(clean, axis=1)
        want[0, 0] = R - 1  # the NaN
        np.testing.assert_array_equal(exact, want)
        if dot is not None:
            _check_sum(dot, clean.astype(np.float64), (1,))
