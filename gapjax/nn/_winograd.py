"""Winograd's minimal filtering for stride-1 2-D convolutions on CPU, forward and both gradients.

A 2-D convolution with an ``rh x rw`` kernel is computed one output tile of ``m x m`` at a
time from an input tile of ``(m + rh - 1) x (m + rw - 1)``:

    Y = A_h^T [ (G_h g G_w^T) (.) (B_h^T d B_w) ] A_w

(Lavin & Gray's F(m x m, r x r), summed over the input channels: the elementwise product is one
matrix product over channels per tile position). With ``m = 4`` a 3x3 kernel takes 36
multiplications per tile of 16 outputs instead of 144 (4x fewer), a 5x5 kernel 64 instead of
400 (6.25x fewer); the transforms are additions and small products.

Laid out for XLA:CPU (``benchmarks/conv_cpu.py``): the transforms along the first spatial axis
are small matrix products (so that XLA cannot fuse, and recompute, them into their consumers);
those along the second axis are elementwise sums of strided slices; the products over channels
are one batched ``dot_general`` over the tile positions. The gradients are written by hand from
the same pieces (``jax.custom_vjp``): the input gradient runs the transposed transforms with
overlap-adds of the tiles, the kernel gradient is one batched product over every (batch x tile)
row followed by the kernel transform's transpose.

Numerics: float32 only. The transforms use the interpolation points 0, +-1, +-2 (and +-1/2 for
5x5 kernels); the results differ from a direct convolution by about 1e-5 of the output's largest
magnitude (the tests bound it at 2e-5), against about 1e-6 for a direct float32 sum.

References:
  Lavin, Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, arXiv:1509.09308.
  Winograd, "Arithmetic Complexity of Computations", SIAM 1980 (minimal filtering algorithms).
"""

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Output tile per spatial axis, and the interpolation points, per kernel size on that axis.
TILE = 4
_POINTS = {
    3: (0, 1, -1, 2, -2),
    5: (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)),
}
KERNEL_SIZES = tuple(_POINTS)


def _inverse(rows: list[list[Fraction]]) -> list[list[Fraction]]:
    """The exact inverse of a small square matrix of fractions (Gauss-Jordan)."""
    n = len(rows)
    aug = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(rows)]
    for col in range(n):
        pivot = next(i for i in range(col, n) if aug[i][col] != 0)
        aug[col], aug[pivot] = aug[pivot], aug[col]
        scale = aug[col][col]
        aug[col] = [v / scale for v in aug[col]]
        for i in range(n):
            if i != col and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [a - f * b for a, b in zip(aug[i], aug[col], strict=True)]
    return [row[n:] for row in aug]


@functools.cache
def transforms(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T, G, B^T)`` of F(m, r): ``y = A^T [(G g) * (B^T d)]`` is the correlation
    ``y[i] = sum_k g[k] d[i + k]`` of a length-``m + r - 1`` tile ``d`` with a length-``r``
    kernel ``g``.

    Toom-Cook on the points of ``_POINTS[r]`` and infinity: ``A`` and ``G`` evaluate the
    output's and the kernel's polynomials there, ``B^T`` is the transposed inverse of the full
    evaluation matrix (the interpolation); each row of ``B^T`` is scaled to small integers and
    the scale moved into ``G``. Computed exactly in fractions, returned as float64.
    """
    points = [Fraction(p) for p in _POINTS[r]]
    a = m + r - 1
    if len(points) != a - 1:
        raise ValueError(f"F({m}, {r}) needs {a - 1} finite points, got {len(points)}")

    def evaluation(n: int) -> list[list[Fraction]]:
        rows = [[p**k for k in range(n)] for p in points]
        rows.append([Fraction(int(k == n - 1)) for k in range(n)])  # the point at infinity
        return rows

    a_mat, g_mat = evaluation(m), evaluation(r)
    inverse = _inverse(evaluation(a))
    b_t = [[inverse[j][i] for j in range(a)] for i in range(a)]
    for i, row in enumerate(b_t):
        den = math.lcm(*(v.denominator for v in row))
        num = math.gcd(*((v * den).numerator for v in row))
        scale = Fraction(den, num)
        b_t[i] = [v * scale for v in row]
        g_mat[i] = [v / scale for v in g_mat[i]]
    a_t = [list(col) for col in zip(*a_mat, strict=True)]
    as_float = lambda rows: np.array([[float(v) for v in row] for row in rows])  # noqa: E731
    return as_float(a_t), as_float(g_mat), as_float(b_t)


def _combine(coefficients: np.ndarray, term) -> jax.Array:
    """``sum_j coefficients[j] * term(j)`` over the nonzero coefficients (+-1 as add/subtract)."""
    total = None
    for j, c in enumerate(coefficients):
        if c == 0:
            continue
        t = term(j)
        t = t if c == 1 else -t if c == -1 else t * jnp.asarray(c, t.dtype)
        total = t if total is None else total + t
    return total


def _matmul(mat: np.ndarray, x: jax.Array) -> jax.Array:
    """``mat @ x`` over x's leading axis (a small transform as one product)."""
    lead = x.shape[0]
    out = jnp.dot(jnp.asarray(mat, x.dtype), x.reshape(lead, -1))
    return out.reshape(mat.shape[0], *x.shape[1:])


def _tiles(size: int, lo: int, hi: int, r: int) -> tuple[int, int, int]:
    """(output size, tiles, padded input size) along one spatial axis."""
    out = size + lo + hi - r + 1
    tiles = -(-out // TILE)
    return out, tiles, (tiles - 1) * TILE + TILE + r - 1


def _windows(x: jax.Array, axis: int, a: int, tiles: int) -> list[jax.Array]:
    """``[x[..., t * TILE + j, ...] for t in range(tiles)]`` for each offset ``j < a``: the
    ``j``-th element of every tile along ``axis`` (strided slices)."""
    return [lax.slice_in_dim(x, j, j + (tiles - 1) * TILE + 1, TILE, axis=axis) for j in range(a)]


def _overlap_add(pieces: list[jax.Array], axis: int, size: int) -> jax.Array:
    """The transpose of ``_windows``: ``out[..., t * TILE + j, ...] += pieces[j][..., t, ...]``,
    ``size`` long on ``axis``; as sums of whole blocks of ``TILE`` (no strided scatter)."""
    a, tiles = len(pieces), pieces[0].shape[axis]
    spill = -(-a // TILE) - 1  # blocks a window reaches past its own
    blocks = []
    for jj in range(TILE):
        total = None
        for q in range(spill + 1):
            if q * TILE + jj >= a:
                continue
            pad = [(0, 0, 0)] * pieces[0].ndim
            pad[axis] = (q, spill - q, 0)
            part = lax.pad(pieces[q * TILE + jj], jnp.zeros((), pieces[0].dtype), pad)
            total = part if total is None else total + part
        blocks.append(total)
    out = jnp.stack(blocks, axis=axis + 1)
    shape = list(out.shape)
    shape[axis : axis + 2] = [(tiles + spill) * TILE]
    return lax.slice_in_dim(out.reshape(shape), 0, size, axis=axis)


def conv2d(x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]]):
    """Stride-1 2-D convolution by F(4 x 4, rh x rw): ``x`` ``(n, h, w, c)`` (channels last),
    ``w`` ``(rh, rw, c, o)`` with ``rh, rw`` in ``KERNEL_SIZES``, ``pads`` ``((top, bottom),
    (left, right))`` (negative crops, as in ``lax``). Equals ``lax.conv_general_dilated(x, w,
    (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))`` up to the transforms' rounding;
    float32 in and out. Differentiable (the gradients are Winograd too)."""
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return _conv2d(x, w, (tuple(x.shape), tuple(w.shape), pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d(x, w, geometry):
    return _conv2d_fwd(x, w, geometry)[0]


def _sizes(geometry):
    """(n, c, o, rh, rw, (oh, th, hp), (ow, tw, wp)) of the convolution."""
    (n, h, wd, c), (rh, rw, _, o), ((pt, pb), (pl, pr)) = geometry
    return n, c, o, rh, rw, _tiles(h, pt, pb, rh), _tiles(wd, pl, pr, rw)


def _input_pads(geometry, hp, wp):
    """``lax.pad``'s config from the input to the tiles' padded input."""
    (_, h, wd, _), _, ((pt, _), (pl, _)) = geometry
    return [(0, 0, 0), (pt, hp - h - pt, 0), (pl, wp - wd - pl, 0), (0, 0, 0)]


def _conv2d_fwd(x, w, geometry):
    n, c, o, rh, rw, (oh, th, hp), (ow, tw, wp) = _sizes(geometry)
    at_h, g_h, bt_h = transforms(TILE, rh)
    at_w, g_w, bt_w = transforms(TILE, rw)
    ah, aw = len(bt_h), len(bt_w)
    xp = lax.pad(x, jnp.zeros((), x.dtype), _input_pads(geometry, hp, wp))
    # B_h^T along the first axis as a product over each tile's rows (a product, so that XLA
    # does not fuse and recompute it in every consumer), then B_w^T along the second as sums of
    # strided slices: v[i, k] = (B_h^T d B_w)[i, k] for every tile d.
    t = _matmul(bt_h, jnp.stack(_windows(xp, 1, ah, th)))  # (ah, n, th, wp, c)
    cols = _windows(t, 3, aw, tw)  # aw x (ah, n, th, tw, c)
    v = jnp.stack([_combine(bt_w[k], cols.__getitem__) for k in range(aw)], axis=1)
    v = v.reshape(ah * aw, n * th * tw, c)
    u = jnp.einsum("ik,klco,jl->ijco", g_h.astype(np.float32), w, g_w.astype(np.float32))
    u = u.reshape(ah * aw, c, o)
    prod = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # (ah * aw, tiles, o)
    # A_h^T as a product, A_w^T as sums written straight into the output's layout.
    z = _matmul(at_h, prod.reshape(ah, aw, n, th, tw, o))  # (TILE, aw, n, th, tw, o)
    rows = [
        jnp.stack([_combine(at_w[s], lambda k, r=r: z[r, k]) for s in range(TILE)], axis=3)
        for r in range(TILE)
    ]
    y = jnp.stack(rows, axis=2).reshape(n, th * TILE, tw * TILE, o)
    return y[:, :oh, :ow], (v, u)


def _conv2d_bwd(geometry, res, dy):
    """The transposes of the forward's steps, in reverse order."""
    v, u = res
    n, c, o, rh, rw, (oh, th, hp), (ow, tw, wp) = _sizes(geometry)
    at_h, g_h, bt_h = transforms(TILE, rh)
    at_w, g_w, bt_w = transforms(TILE, rw)
    ah, aw = len(bt_h), len(bt_w)
    zero = jnp.zeros((), dy.dtype)
    pad = [(0, 0, 0), (0, th * TILE - oh, 0), (0, tw * TILE - ow, 0), (0, 0, 0)]
    dy = lax.pad(dy, zero, pad).reshape(n, th, TILE, tw, TILE, o)
    dz = jnp.stack(
        [
            jnp.stack([_combine(at_w[:, k], lambda s, r=r: dy[:, :, r, :, s]) for k in range(aw)])
            for r in range(TILE)
        ]
    )  # (TILE, aw, n, th, tw, o)
    dprod = _matmul(at_h.T, dz).reshape(ah * aw, n * th * tw, o)
    dv = lax.dot_general(dprod, u, (((2,), (2,)), ((0,), (0,))))  # (ah * aw, tiles, c)
    du = lax.dot_general(v, dprod, (((1,), (1,)), ((0,), (0,))))  # (ah * aw, c, o)
    du = du.reshape(ah, aw, c, o)
    dw = jnp.einsum("ik,ijco,jl->klco", g_h.astype(np.float32), du, g_w.astype(np.float32))
    dv = dv.reshape(ah, aw, n, th, tw, c)
    dcols = [_combine(bt_w[:, l], lambda k: dv[:, k]) for l in range(aw)]
    dt = _overlap_add(dcols, 3, wp)  # (ah, n, th, wp, c)
    drows = _matmul(bt_h.T, dt)
    dxp = _overlap_add(list(drows), 1, hp)  # (n, hp, wp, c)
    back = [(-lo, -hi, 0) for lo, hi, _ in _input_pads(geometry, hp, wp)]
    return lax.pad(dxp, zero, back), dw


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
