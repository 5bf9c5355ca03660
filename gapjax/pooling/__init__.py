"""Pure, jit-compiled pooling functions (no Flax, no state, no I/O).

The global family reduces every spatial position of each channel to one value; see
``gapjax.pooling.global_pool`` for the arguments all of them share (``data_format``, ``axis``,
``keepdims``, ``mask``, ``fill_value``) and the numerics contract.
"""

from gapjax.pooling.global_pool import (
    attention_pool,
    avgmax_pool,
    catavgmax_pool,
    gem_pool,
    global_avg_pool,
    global_lp_pool,
    global_max_pool,
    global_min_pool,
    global_stochastic_pool,
    global_sum_pool,
    lse_pool,
    mixed_pool,
    soft_pool,
    topk_pool,
    weighted_avg_pool,
)

__all__ = [
    "attention_pool",
    "avgmax_pool",
    "catavgmax_pool",
    "gem_pool",
    "global_avg_pool",
    "global_lp_pool",
    "global_max_pool",
    "global_min_pool",
    "global_stochastic_pool",
    "global_sum_pool",
    "lse_pool",
    "mixed_pool",
    "soft_pool",
    "topk_pool",
    "weighted_avg_pool",
]
