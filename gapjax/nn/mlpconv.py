"""The mlpconv block of Network In Network: a k x k convolution, then 1x1 convolutions."""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Shaped

from gapjax.nn.conv import Conv

__all__ = ["MLPConv"]

LECUN_NORMAL = nnx.initializers.lecun_normal()  # Flax's default kernel init


class MLPConv(nnx.Module):
    """A k x k convolution followed by any number of 1x1 convolutions, each with ReLU.

    The "micro network" of NIN: ``features = (192, 160, 96)`` with ``kernel_size=5`` is the first
    block of NIN on CIFAR-10 (a 5x5 convolution to 192 maps, then 1x1 convolutions to 160 and
    96). All convolutions have stride 1 unless ``strides`` says otherwise; inputs are
    channels-last, ``(batch, *spatial, channels)``, with 1-3 spatial axes.

    Args:
      in_features: channels of the input.
      features: output channels of each layer; the first is the k x k convolution, the others
        are 1x1.
      kernel_size: of the first convolution: an int (square, 2-D) or one size per spatial axis.
      padding: of the first convolution: an int (the same on every side), per-axis (lo, hi)
        pairs, "SAME" or "VALID"; default ``k // 2`` on each side (NIN's pad 2 for 5x5, 1 for
        3x3). The 1x1 layers need none.
      strides: of the first convolution.
      kernel_init: one initializer for every layer, or one per layer (NIN on CIFAR-100 uses
        different standard deviations for conv1 and cccp1-2).
      bias_init: one initializer, or one per layer.
      activation: applied after every layer (ReLU).
      final_activation: apply it after the last layer too (NIN does, before the GAP).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay ``param_dtype``.
      param_dtype: dtype of the parameters.
      rngs: random streams for the initializers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gapjax import nn
      >>> block = nn.MLPConv(3, (192, 160, 96), kernel_size=5, rngs=nnx.Rngs(0))
      >>> block(jnp.ones((2, 32, 32, 3))).shape
      (2, 32, 32, 96)

    References:
      Lin, Chen, Yan, "Network In Network", ICLR 2014, arXiv:1312.4400.
    """

    def __init__(
        self,
        in_features: int,
        features: Sequence[int],
        *,
        kernel_size: int | Sequence[int] = 3,
        padding: Any = None,
        strides: int | Sequence[int] = 1,
        kernel_init: Callable | Sequence[Callable] = LECUN_NORMAL,
        bias_init: Callable | Sequence[Callable] = nnx.initializers.zeros,
        activation: Callable = jax.nn.relu,
        final_activation: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        features = tuple(features)
        if not features or any(not isinstance(f, int) or f <= 0 for f in features):
            raise ValueError(f"MLPConv: features must be positive ints, got {features!r}.")
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if not 1 <= len(kernel) <= 3 or min(kernel) <= 0:
            raise ValueError(
                f"MLPConv: kernel_size must be a positive int or 1-3 positive sizes, got "
                f"{kernel_size!r}."
            )
        if padding is None:
            padding = [(k // 2, k // 2) for k in kernel]
        kernel_inits = _per_layer(kernel_init, len(features), "kernel_init")
        bias_inits = _per_layer(bias_init, len(features), "bias_init")
        widths = (in_features, *features)
        self.layers = nnx.List(
            [
                Conv(
                    widths[i],
                    widths[i + 1],
                    kernel if i == 0 else (1,) * len(kernel),
                    strides=strides if i == 0 else 1,
                    padding=padding if i == 0 else "VALID",
                    kernel_init=kernel_inits[i],
                    bias_init=bias_inits[i],
                    dtype=dtype,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for i in range(len(features))
            ]
        )
        self.activation = activation
        self.final_activation = final_activation
        self.features = features

    def __call__(self, x: Shaped[ArrayLike, "batch *spatial channels"]) -> Float[Array, "..."]:
        """Applies the block.

        Returns:
          ``(batch, *spatial_out, features[-1])``.
        """
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.final_activation or i < len(self.layers) - 1:
                x = self.activation(x)
        return x


def _per_layer(value: Any, n: int, arg: str) -> list:
    if callable(value):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"MLPConv: {arg} gives {len(value)} initializers for {n} layers.")
    return value
