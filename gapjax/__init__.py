"""gapjax: global and weighted pooling for JAX/Flax, and Network In Network reproduced fast.

The pooling functions of ``gapjax.pooling`` are re-exported here::

    import gapjax
    y = gapjax.global_avg_pool(x)            # (batch, *spatial, channels) -> (batch, channels)
    y = gapjax.gem_pool(x, p=3.0, mask=m)    # masks work with every reducer
"""

from gapjax.pooling import *  # noqa: F403
from gapjax.pooling import __all__ as _pooling_all

__version__ = "0.1.0"

__all__ = ["__version__", *_pooling_all]
