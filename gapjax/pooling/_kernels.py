"""Fast spatial reductions for the global pooling functions (private; work in progress).

Plain ``jnp`` formulations for now; CPU-specific formulations follow.
"""

import jax
import jax.numpy as jnp


def _acc_dtype(dtype):
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def spatial_sum(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Sum of ``x`` over ``axes``, accumulated (and returned) in float32 for 16-bit floats."""
    return jnp.sum(x, axis=tuple(axes), dtype=_acc_dtype(x.dtype))


def spatial_mean(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Mean of ``x`` over ``axes``, accumulated (and returned) in float32 for 16-bit floats."""
    return jnp.mean(x, axis=tuple(axes), dtype=_acc_dtype(x.dtype))


def spatial_max(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Max of ``x`` over ``axes`` in x's dtype (NaN propagates, ties share the gradient)."""
    return jnp.max(x, axis=tuple(axes))
