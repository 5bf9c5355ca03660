"""Shared fixtures and NumPy references for the pooling tests.

The references below are written independently of gapjax: plain float64 NumPy over the list of
valid values of each output element, with the formulas of REFERENCE.md section 2.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest


def sites(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Moves ``axes`` last and flattens them: ``(*kept, positions)``."""
    kept = [i for i in range(a.ndim) if i not in axes]
    a = np.transpose(a, kept + list(axes))
    return a.reshape((*a.shape[: len(kept)], -1))


def np_pool(
    x: np.ndarray,
    axes: tuple[int, ...],
    fn1d: Callable[..., float],
    *,
    mask: np.ndarray | None = None,
    site_arrays: tuple[np.ndarray, ...] = (),
    params: dict[str, Any] | None = None,
    fill: float = 0.0,
) -> np.ndarray:
    """Applies ``fn1d(values, *site_values, **params_at_element)`` to every output element.

    ``mask`` and ``site_arrays`` must already broadcast against ``x`` (same rank); ``params`` are
    scalars or arrays broadcasting to the output shape.
    """
    x = np.asarray(x, np.float64)
    mask = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    xs = sites(x, axes)
    ms = sites(mask, axes)
    ss = [sites(np.broadcast_to(np.asarray(s, np.float64), x.shape), axes) for s in site_arrays]
    out_shape = xs.shape[:-1]
    # Python ints and bools (counts, flags) pass through; numbers become per-element arrays.
    params = {
        k: v
        if isinstance(v, (bool, int))
        else np.broadcast_to(np.asarray(v, np.float64), out_shape)
        for k, v in (params or {}).items()
    }
    out = np.empty(out_shape)
    for idx in np.ndindex(*out_shape):
        keep = ms[idx]
        if not keep.any():
            out[idx] = fill
            continue
        out[idx] = fn1d(
            xs[idx][keep],
            *(s[idx][keep] for s in ss),
            **{k: v if isinstance(v, (bool, int)) else v[idx] for k, v in params.items()},
        )
    return out


# ---- one-dimensional references: values of one output element over its valid positions ----


def ref_avg(v):
    return v.mean()


def ref_sum(v):
    return v.sum()


def ref_max(v):
    return v.max()


def ref_min(v):
    return v.min()


def ref_lp(v, p):
    return np.sum(v**p) ** (1 / p)


def ref_gem(v, p, eps=1e-6):
    return np.mean(np.maximum(v, eps) ** p) ** (1 / p)


def ref_lse(v, r):
    return (np.logaddexp.reduce(r * v) - math.log(v.size)) / r


def wildcat_k(k, n, minimum):
    """WILDCAT's get_positive_k: counts as they are (capped at n), fractions round(k * n)."""
    if isinstance(k, int):
        return min(k, n)
    return min(max(round(k * n), minimum), n)


def ref_topk(v, k, k_min=0, alpha=1.0, halve=False):
    s = np.sort(v)[::-1]
    kt = wildcat_k(k, v.size, 1)
    kb = wildcat_k(k_min, v.size, 0)
    out = s[:kt].mean()
    if kb > 0:
        out = out + alpha * s[::-1][:kb].mean()
        if halve and alpha != 0:
            out /= 2
    return out


def ref_mixed(v, alpha):
    return alpha * v.max() + (1 - alpha) * v.mean()


def ref_avgmax(v):
    return 0.5 * (v.mean() + v.max())


def ref_soft(v):
    w = np.exp(v - v.max())
    return np.sum(w * v) / np.sum(w)


def ref_weighted(v, w):
    return np.sum(w * v) / np.sum(w) if np.sum(w) != 0 else 0.0


def ref_attention(v, s):
    w = np.exp(s - s.max())
    return np.sum(w * v) / np.sum(w)


def ref_stochastic_eval(v):
    a = np.maximum(v, 0)
    return np.sum(a * a) / np.sum(a) if np.sum(a) > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Layout:
    """A test layout: how x is shaped and which axes are spatial."""

    name: str
    shape: tuple[int, ...]
    kwargs: dict
    axes: tuple[int, ...]
    channel_axis: int | None

    @property
    def site_shape(self):
        if self.channel_axis is None:
            return tuple(
                1 if i not in self.axes and i != 0 else d for i, d in enumerate(self.shape)
            )
        return tuple(d for i, d in enumerate(self.shape) if i != self.channel_axis)

    def expand_site(self, a: np.ndarray) -> np.ndarray:
        """A (batch, *spatial) array as it broadcasts against x."""
        if self.channel_axis is None:
            return a
        return np.expand_dims(a, self.channel_axis)


LAYOUTS = [
    Layout("cl1d", (2, 7, 3), {}, (1,), 2),
    Layout("cl2d", (2, 4, 5, 3), {}, (1, 2), 3),
    Layout("cl3d", (2, 3, 2, 4, 2), {}, (1, 2, 3), 4),
    Layout("cf2d", (2, 3, 4, 5), {"data_format": "channels_first"}, (2, 3), 1),
    # Explicit axes: (batch, channels, time, height) pooled over (time, height) at axes 2, 3 is
    # channels_first by another name; this one pools two non-adjacent axes of a 4-D array.
    Layout("axis", (2, 4, 3, 5), {"axis": (1, 3)}, (1, 3), None),
]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def distinct_values(rng, shape, lo=0.1, hi=2.0):
    """Values with gaps well above a finite-difference step, in random order (no ties)."""
    n = math.prod(shape)
    return rng.permutation(np.linspace(lo, hi, n)).reshape(shape).astype(np.float32)
