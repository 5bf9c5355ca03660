"""Training: Caffe's SGD in optax, the jitted step, evaluation, checkpoints, configs.

``run(config, workdir)`` trains and evaluates a configured NIN (``python -m experiments.train``
is a thin command line over it); the pieces are public for custom loops.
"""

from gapjax.train.checkpoint import *  # noqa: F403
from gapjax.train.checkpoint import __all__ as _checkpoint_all
from gapjax.train.config import *  # noqa: F403
from gapjax.train.config import __all__ as _config_all
from gapjax.train.loop import *  # noqa: F403
from gapjax.train.loop import __all__ as _loop_all
from gapjax.train.optim import *  # noqa: F403
from gapjax.train.optim import __all__ as _optim_all

__all__ = [*_checkpoint_all, *_config_all, *_loop_all, *_optim_all]
