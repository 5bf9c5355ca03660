"""Flax modules: one per pooling function, learnable pools, NIN's mlpconv block, and ``Conv``.

``Conv`` is ``nnx.Conv`` with a convolution (``conv_general_dilated``) that runs as matrix
products on CPU, forward and both gradients; ``MLPConv`` is built from it.

NNX modules live here (``from gapjax import nn``); Linen versions of the global pooling layers
are in ``gapjax.nn.linen``. Modules hold settings and parameters and call the functions of
``gapjax.pooling``: the math is written once.
"""

from gapjax.nn.conv import *  # noqa: F403
from gapjax.nn.conv import __all__ as _conv_all
from gapjax.nn.mlpconv import *  # noqa: F403
from gapjax.nn.mlpconv import __all__ as _mlpconv_all
from gapjax.nn.pooling import *  # noqa: F403
from gapjax.nn.pooling import __all__ as _pooling_all

__all__ = [*_pooling_all, *_conv_all, *_mlpconv_all]
