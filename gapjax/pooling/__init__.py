"""Pure, jit-compiled pooling functions (no Flax, no state, no I/O).

- ``global_pool``: one value per channel from a whole feature map (``data_format``, ``axis``,
  ``keepdims``, ``mask``, ``fill_value``; see its docstring for the numerics contract).
- ``window_pool``: sliding windows with PyTorch's, Caffe's and Keras' exact semantics.
- ``adaptive_pool``: PyTorch's adaptive windows for a fixed output size.
"""

from gapjax.pooling import adaptive_pool, global_pool, window_pool
from gapjax.pooling.adaptive_pool import *  # noqa: F403
from gapjax.pooling.global_pool import *  # noqa: F403
from gapjax.pooling.window_pool import *  # noqa: F403

__all__ = [*global_pool.__all__, *window_pool.__all__, *adaptive_pool.__all__]
