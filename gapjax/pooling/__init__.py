"""Pure, jit-compiled pooling functions (no Flax, no state, no I/O).

The global family reduces every spatial position of each channel to one value; see
``gapjax.pooling.global_pool`` for the arguments all of them share (``data_format``, ``axis``,
``keepdims``, ``mask``, ``fill_value``) and the numerics contract.
"""

from gapjax.pooling import global_pool
from gapjax.pooling.global_pool import *  # noqa: F403  (the names of global_pool.__all__)

__all__ = list(global_pool.__all__)
