"""Flax NNX modules for every pooling function of ``gapjax.pooling``.

A module stores its settings (and, where the method learns them, its parameters) and calls the
function: there is no second implementation of any pooling math here.

- Fixed pools (``GlobalAvgPool``, ``TopKPool``, ``MaxPool``, ``AdaptiveAvgPool``...) take the
  function's keyword arguments when built and the data when called::

      pool = MaxPool(3, stride=2, convention="caffe")    # = max_pool(x, 3, stride=2, ...)
      y = pool(x)

  Settings are validated when the module is built (unknown names, ``p <= 0``...).
- Learnable pools: ``GeMPool`` (p), ``LSEPool`` (r), ``MixedPool`` (alpha), ``GatedMixedPool``
  (a gate computed from the input), ``GWAP`` (a 1x1-convolution weight map) and
  ``AttentionPool`` (learned queries, several heads).
- Stochastic pools (``GlobalStochasticPool``, ``StochasticPool``) sample from ``nnx.Rngs`` in
  training and are deterministic in evaluation; ``model.train()`` / ``model.eval()`` (or
  ``nnx.view(model, deterministic=...)``) switch them, as they switch ``nnx.Dropout``.
"""

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import rnglib
from jaxtyping import Array, ArrayLike, Float, Shaped

from gapjax import pooling
from gapjax.pooling._common import (
    SettingTypeError,
    check_bool,
    check_mask,
    prepare_mask,
    resolve_layout,
)

__all__ = [
    "GWAP",
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "AttentionPool",
    "AvgMaxPool",
    "AvgPool",
    "CatAvgMaxPool",
    "GatedMixedPool",
    "GeMPool",
    "GlobalAvgPool",
    "GlobalLPPool",
    "GlobalMaxPool",
    "GlobalMinPool",
    "GlobalStochasticPool",
    "GlobalSumPool",
    "LPPool",
    "LSEPool",
    "MaxPool",
    "MaxUnpool",
    "MinPool",
    "MixedPool",
    "SoftPool",
    "StochasticPool",
    "TopKPool",
    "WeightedAvgPool",
    "positive",
]

Input = Shaped[ArrayLike, "..."]
Mask = Shaped[ArrayLike, "..."] | None
Rngs = rnglib.Rngs | rnglib.RngStream | jax.Array | None
LECUN_NORMAL = nnx.initializers.lecun_normal()  # Flax's default kernel init

# --------------------------------------------------------------------------------------------
# Fixed pools: a function and its bound settings.
# --------------------------------------------------------------------------------------------


class _FunctionModule(nnx.Module):
    """A pooling function with its settings bound; calls pass the data (and a mask).

    Subclasses name the ``function`` and its data arguments (``inputs``); every other argument
    of the function is a setting, given positionally (e.g. ``kernel_size``, ``p``, ``k``) or
    by keyword when the module is built. Array-valued settings (a per-channel p) are stored as
    data, the rest as static attributes.
    """

    function: ClassVar[Callable]
    inputs: ClassVar[tuple[str, ...]] = ("x",)
    call_args: ClassVar[tuple[str, ...]] = ("mask",)

    def __init__(self, *args: Any, **kwargs: Any):
        fn = type(self).function
        params = inspect.signature(fn).parameters
        positional = [
            name
            for name, p in params.items()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and name not in self.inputs
        ]
        name = type(self).__name__
        if len(args) > len(positional):
            raise TypeError(
                f"{name}: takes at most {len(positional)} positional setting(s) "
                f"{positional}, got {len(args)}."
            )
        for arg, value in zip(positional, args, strict=False):
            if arg in kwargs:
                raise TypeError(f"{name}: got {arg!r} both positionally and by keyword.")
            kwargs[arg] = value
        reserved = sorted(set(kwargs) & set(self.inputs + self.call_args))
        if reserved:
            raise TypeError(f"{name}: {reserved} are given when the module is called, not built.")
        missing = [
            arg
            for arg in positional
            if params[arg].default is inspect.Parameter.empty and arg not in kwargs
        ]
        if missing:
            raise TypeError(f"{name}: missing required setting(s) {missing}.")
        try:
            settings = fn.settings(**kwargs)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{name}: {e}") from None
        arrays = {k: v for k, v in settings.items() if isinstance(v, jax.Array | np.ndarray)}
        self.settings = {k: v for k, v in settings.items() if k not in arrays}
        self.arrays = nnx.data({k: jnp.asarray(v) for k, v in arrays.items()})

    def _apply(self, *data: Any, **call: Any) -> Any:
        return type(self).function(*data, **call, **self.settings, **self.arrays)


def _wrap(fn: Callable, summary: str, example: str) -> str:
    """The docstring of a fixed pool's module."""
    return f"""{summary}

    Module form of ``gapjax.{fn.__name__}``: the settings are that function's arguments
    (positional ones such as ``kernel_size`` may be given positionally), validated when the
    module is built; the call takes the data.

    Example:
{example}
    """


class _GlobalModule(_FunctionModule):
    def __call__(self, x: Input, *, mask: Mask = None) -> Shaped[Array, "..."]:
        """Pools x (``mask`` as in the function: True marks positions to pool).

        Returns:
          The function's result, e.g. ``(batch, channels)``.
        """
        return self._apply(x, mask=mask)


class _WindowModule(_FunctionModule):
    call_args = ()

    def __call__(self, x: Input) -> Any:
        """Pools x over windows.

        Returns:
          The function's result (with ``return_indices=True``, the values and the indices).
        """
        return self._apply(x)


_X = "      >>> import jax.numpy as jnp\n      >>> from gapjax import nn\n"


class GlobalAvgPool(_GlobalModule):
    __doc__ = _wrap(
        pooling.global_avg_pool,
        "Global average pooling (GAP), NIN's head.",
        _X + "      >>> nn.GlobalAvgPool()(jnp.ones((2, 4, 4, 3))).shape\n      (2, 3)",
    )
    function = staticmethod(pooling.global_avg_pool)


class GlobalSumPool(_GlobalModule):
    __doc__ = _wrap(
        pooling.global_sum_pool,
        "Global sum pooling.",
        _X + "      >>> nn.GlobalSumPool()(jnp.ones((1, 2, 2, 1)))\n"
        "      Array([[4.]], dtype=float32)",
    )
    function = staticmethod(pooling.global_sum_pool)


class GlobalMaxPool(_GlobalModule):
    __doc__ = _wrap(
        pooling.global_max_pool,
        "Global max pooling.",
        _X + "      >>> nn.GlobalMaxPool()(jnp.array([[[1.0], [3.0]]]))\n"
        "      Array([[3.]], dtype=float32)",
    )
    function = staticmethod(pooling.global_max_pool)


class GlobalMinPool(_GlobalModule):
    __doc__ = _wrap(
        pooling.global_min_pool,
        "Global min pooling.",
        _X + "      >>> nn.GlobalMinPool()(jnp.array([[[1.0], [3.0]]]))\n"
        "      Array([[1.]], dtype=float32)",
    )
    function = staticmethod(pooling.global_min_pool)


class GlobalLPPool(_GlobalModule):
    __doc__ = _wrap(
        pooling.global_lp_pool,
        "Global power-average (LP) pooling with a fixed p.",
        _X + "      >>> nn.GlobalLPPool(2.0)(jnp.array([[[3.0], [4.0]]]))\n"
        "      Array([[5.]], dtype=float32)",
    )
    function = staticmethod(pooling.global_lp_pool)


class AvgMaxPool(_GlobalModule):
    __doc__ = _wrap(
        pooling.avgmax_pool,
        "The mean of global average and max pooling (timm's avgmax).",
        _X + "      >>> nn.AvgMaxPool()(jnp.array([[[0.0], [4.0]]]))\n"
        "      Array([[3.]], dtype=float32)",
    )
    function = staticmethod(pooling.avgmax_pool)


class CatAvgMaxPool(_GlobalModule):
    __doc__ = _wrap(
        pooling.catavgmax_pool,
        "Global average and max pooling concatenated (timm's catavgmax): twice the channels.",
        _X + "      >>> nn.CatAvgMaxPool()(jnp.ones((2, 4, 4, 3))).shape\n      (2, 6)",
    )
    function = staticmethod(pooling.catavgmax_pool)


class SoftPool(_GlobalModule):
    __doc__ = _wrap(
        pooling.soft_pool,
        "Global SoftPool: the softmax-weighted mean of the values.",
        _X + "      >>> nn.SoftPool()(jnp.full((1, 3, 3, 2), 2.0))\n"
        "      Array([[2., 2.]], dtype=float32)",
    )
    function = staticmethod(pooling.soft_pool)


class TopKPool(_GlobalModule):
    __doc__ = _wrap(
        pooling.topk_pool,
        "Top-k pooling, with WILDCAT's optional negative evidence (k, k_min, alpha, halve).",
        _X + "      >>> nn.TopKPool(2)(jnp.array([[[1.0], [5.0], [2.0], [4.0]]]))\n"
        "      Array([[4.5]], dtype=float32)",
    )
    function = staticmethod(pooling.topk_pool)


class WeightedAvgPool(_FunctionModule):
    __doc__ = _wrap(
        pooling.weighted_avg_pool,
        "Weighted average pooling with weights given at call time (see GWAP for learned ones).",
        _X + "      >>> x, w = jnp.array([[[2.0], [6.0]]]), jnp.array([[3.0, 1.0]])\n"
        "      >>> nn.WeightedAvgPool()(x, w)\n"
        "      Array([[3.]], dtype=float32)",
    )
    function = staticmethod(pooling.weighted_avg_pool)
    inputs = ("x", "weights")

    def __call__(
        self, x: Input, weights: Shaped[ArrayLike, "..."], *, mask: Mask = None
    ) -> Float[Array, "..."]:
        """Pools x with the given weights.

        Returns:
          ``sum w x / sum w`` per channel, e.g. ``(batch, channels)``.
        """
        return self._apply(x, weights, mask=mask)


class AvgPool(_WindowModule):
    __doc__ = _wrap(
        pooling.avg_pool,
        "Windowed average pooling (PyTorch, Caffe or Keras semantics).",
        _X + "      >>> nn.AvgPool(2)(jnp.ones((1, 4, 4, 3))).shape\n      (1, 2, 2, 3)",
    )
    function = staticmethod(pooling.avg_pool)


class MaxPool(_WindowModule):
    __doc__ = _wrap(
        pooling.max_pool,
        "Windowed max pooling; ``convention='caffe'`` gives NIN's 32 -> 16 -> 8.",
        _X + "      >>> pool = nn.MaxPool(3, stride=2, convention='caffe')\n"
        "      >>> pool(jnp.ones((1, 32, 32, 3))).shape\n"
        "      (1, 16, 16, 3)",
    )
    function = staticmethod(pooling.max_pool)


class MinPool(_WindowModule):
    __doc__ = _wrap(
        pooling.min_pool,
        "Windowed min pooling.",
        _X + "      >>> nn.MinPool(2)(jnp.ones((1, 4, 4, 3))).shape\n      (1, 2, 2, 3)",
    )
    function = staticmethod(pooling.min_pool)


class LPPool(_WindowModule):
    __doc__ = _wrap(
        pooling.lp_pool,
        "Windowed power-average (LP) pooling.",
        _X + "      >>> nn.LPPool(2.0, 2)(jnp.ones((1, 4, 4, 1)))[0, 0, 0]\n"
        "      Array([2.], dtype=float32)",
    )
    function = staticmethod(pooling.lp_pool)


class AdaptiveAvgPool(_WindowModule):
    __doc__ = _wrap(
        pooling.adaptive_avg_pool,
        "Adaptive average pooling to a fixed output size (PyTorch's windows).",
        _X + "      >>> nn.AdaptiveAvgPool((3, 3))(jnp.ones((1, 7, 7, 2))).shape\n"
        "      (1, 3, 3, 2)",
    )
    function = staticmethod(pooling.adaptive_avg_pool)


class AdaptiveMaxPool(_WindowModule):
    __doc__ = _wrap(
        pooling.adaptive_max_pool,
        "Adaptive max pooling to a fixed output size (PyTorch's windows).",
        _X + "      >>> nn.AdaptiveMaxPool(2)(jnp.ones((1, 5, 5, 2))).shape\n      (1, 2, 2, 2)",
    )
    function = staticmethod(pooling.adaptive_max_pool)


class MaxUnpool(_FunctionModule):
    __doc__ = _wrap(
        pooling.max_unpool,
        "Inverse of max pooling: scatters values back to the positions of their indices.",
        _X + "      >>> y, i = nn.MaxPool(2, return_indices=True)(jnp.ones((1, 4, 4, 1)))\n"
        "      >>> nn.MaxUnpool(2)(y, i).shape\n      (1, 4, 4, 1)",
    )
    function = staticmethod(pooling.max_unpool)
    inputs = ("x", "indices")
    call_args = ()

    def __call__(self, x: Input, indices: Shaped[ArrayLike, "..."]) -> Shaped[Array, "..."]:
        """Unpools x to the positions given by ``indices`` (from ``MaxPool(return_indices=True)``).

        Returns:
          The unpooled array, zero where no value lands.
        """
        return self._apply(x, indices)


# --------------------------------------------------------------------------------------------
# Learnable pools.
# --------------------------------------------------------------------------------------------


def _layout(
    axis: Any,
    data_format: str,
    keepdims: bool,
    fill_value: float,
    owner: str,
    fn: Callable = pooling.global_avg_pool,
) -> dict[str, Any]:
    """The layout settings every global pool shares, validated as ``fn`` does them."""
    layout = {
        "axis": axis,
        "data_format": data_format,
        "keepdims": keepdims,
        "fill_value": fill_value,
    }
    try:
        return fn.settings(**layout)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{owner}: {e}") from None


def _positive_int(owner: str, arg: str, value: Any, *, optional: bool = False) -> int | None:
    """``value`` as an int >= 1 (NumPy ints too); None passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingTypeError(
            f"{owner}: {arg} must be a positive int{' or None' if optional else ''}, got {value!r}."
        )
    if value < 1:
        raise ValueError(f"{owner}: {arg} must be a positive int, got {value!r}.")
    return int(value)


def _masked(x: Any, mask: Any, data_format: str, owner: str) -> jax.Array:
    """x with masked positions set to 0, before any projection reads it.

    A NaN or inf at a masked position would otherwise reach the parameters' gradients through
    the projection (0 * NaN), even though the pooling function ignores it.
    """
    x = jnp.asarray(x)
    if mask is None:
        return x
    check_mask(owner, "mask", mask)
    layout = resolve_layout(x.shape, axis=None, data_format=data_format, fn=owner)
    return jnp.where(prepare_mask(mask, layout, owner), x, jnp.zeros((), x.dtype))


def _check_width(owner: str, x: jax.Array, data_format: str, arg: str, expected: int) -> None:
    """Raises ValueError naming the module and shapes when x's channels are not ``expected``."""
    if x.ndim < 2:
        raise ValueError(
            f"{owner}: x of shape {x.shape} has no channel axis; expected (batch, *spatial, "
            f"channels) or (batch, channels, *spatial)."
        )
    channels = x.shape[-1] if data_format == "channels_last" else x.shape[1]
    if channels != expected:
        raise ValueError(
            f"{owner}: x of shape {x.shape} has {channels} channels ({data_format}), but the "
            f"module was built with {arg}={expected}."
        )


class _LearnedHyperparameter(nnx.Module):
    """A global pool with one hyperparameter (GeM's p, LSE's r, mixed pooling's alpha) that is
    learned (an ``nnx.Param``, scalar or per channel) or fixed; subclasses name the function,
    the attribute and how the value is used (``_use``)."""

    function: ClassVar[Callable]
    attribute: ClassVar[str]

    def __init__(
        self,
        value: float,
        *,
        channels: int | None,
        learnable: bool,
        layout: dict[str, Any],
        param_dtype: Any,
        **settings: Any,
    ):
        owner = type(self).__name__
        try:
            type(self).function.settings(**{self.attribute: value}, **settings)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{owner}: {e}") from None
        channels = _positive_int(owner, "channels", channels, optional=True)
        check_bool(owner, "learnable", learnable)
        shape = () if channels is None else (channels,)
        if learnable:
            param = nnx.Param(jnp.full(shape, value, param_dtype))
        elif channels is None:
            param = float(value)
        else:
            param = nnx.data(jnp.full(shape, value, param_dtype))
        setattr(self, self.attribute, param)
        self.settings = settings
        self.layout = layout

    def _use(self, value: Any) -> Any:
        return value

    def __call__(self, x: Input, *, mask: Mask = None) -> Float[Array, "..."]:
        """Pools x with the current value of the hyperparameter.

        Returns:
          The pooled values, e.g. ``(batch, channels)``.
        """
        value = getattr(self, self.attribute)
        value = value[...] if isinstance(value, nnx.Variable) else value
        fn = type(self).function
        return fn(x, self._use(value), mask=mask, **self.settings, **self.layout)


class GeMPool(_LearnedHyperparameter):
    """Generalized-mean pooling with a learnable power p (init 3), scalar or per channel.

    ``y = (mean_i max(x_i, eps)^p)^(1/p)``, computed by ``gapjax.gem_pool``. p is stored
    as is (as in the paper's code): it should stay positive, which it does in practice with the
    usual learning rates; ``learnable=False`` keeps it fixed.

    Args:
      p: initial power (> 0).
      channels: None for one p shared by all channels, else the number of channels (one p each).
      learnable: learn p (an ``nnx.Param``) or keep it fixed.
      eps: lower clamp of the inputs.
      axis, data_format, keepdims, fill_value: as in ``gapjax.gem_pool``.
      param_dtype: dtype of p.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import nn
      >>> pool = nn.GeMPool(channels=3)
      >>> pool.p.shape, pool(jnp.ones((2, 4, 4, 3))).shape
      ((3,), (2, 3))

    References:
      Radenovic, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation",
      TPAMI 2018, arXiv:1711.02512.
    """

    function = staticmethod(pooling.gem_pool)
    attribute = "p"

    def __init__(
        self,
        p: float = 3.0,
        *,
        channels: int | None = None,
        learnable: bool = True,
        eps: float = 1e-6,
        axis: int | tuple[int, ...] | None = None,
        data_format: str = "channels_last",
        keepdims: bool = False,
        fill_value: float = 0.0,
        param_dtype: Any = jnp.float32,
    ):
        layout = _layout(
            axis, data_format, keepdims, fill_value, type(self).__name__, type(self).function
        )
        super().__init__(
            p,
            channels=channels,
            learnable=learnable,
            layout=layout,
            param_dtype=param_dtype,
            eps=eps,
        )


class LSEPool(_LearnedHyperparameter):
    """Log-sum-exp pooling with a learnable sharpness r, scalar or per channel.

    ``y = (1/r) log mean_i exp(r x_i)``, computed stably by ``gapjax.lse_pool``: small r
    approaches average pooling, large r max pooling. r is stored as is and should stay > 0.

    Args:
      r: initial sharpness (> 0).
      channels: None for one r shared by all channels, else the number of channels.
      learnable: learn r or keep it fixed.
      axis, data_format, keepdims, fill_value: as in ``gapjax.lse_pool``.
      param_dtype: dtype of r.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import nn
      >>> nn.LSEPool(r=1.0)(jnp.full((1, 2, 2, 1), 3.0))
      Array([[3.]], dtype=float32)

    References:
      Pinheiro, Collobert, "From Image-level to Pixel-level Labeling with Convolutional
      Networks", CVPR 2015, arXiv:1411.6228.
    """

    function = staticmethod(pooling.lse_pool)
    attribute = "r"

    def __init__(
        self,
        r: float = 5.0,
        *,
        channels: int | None = None,
        learnable: bool = True,
        axis: int | tuple[int, ...] | None = None,
        data_format: str = "channels_last",
        keepdims: bool = False,
        fill_value: float = 0.0,
        param_dtype: Any = jnp.float32,
    ):
        layout = _layout(
            axis, data_format, keepdims, fill_value, type(self).__name__, type(self).function
        )
        super().__init__(
            r, channels=channels, learnable=learnable, layout=layout, param_dtype=param_dtype
        )


class MixedPool(_LearnedHyperparameter):
    """Mixed max-average pooling with a learnable weight alpha, per layer or per channel.

    ``y = alpha max_i x_i + (1 - alpha) mean_i x_i`` (``gapjax.mixed_pool``). The learned
    alpha is clipped to [0, 1] when used (its gradient is zero outside).

    Args:
      alpha: initial max weight in [0, 1].
      channels: None for one alpha per layer, else the number of channels (one alpha each).
      learnable: learn alpha or keep it fixed.
      axis, data_format, keepdims, fill_value: as in ``gapjax.mixed_pool``.
      param_dtype: dtype of alpha.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import nn
      >>> nn.MixedPool(0.25)(jnp.array([[[0.0], [4.0]]]))  # 0.25 * 4 + 0.75 * 2
      Array([[2.5]], dtype=float32)

    References:
      Lee, Gallagher, Tu, "Generalizing Pooling Functions in Convolutional Neural Networks:
      Mixed, Gated, and Tree", AISTATS 2016, arXiv:1509.08985.
    """

    function = staticmethod(pooling.mixed_pool)
    attribute = "alpha"

    def __init__(
        self,
        alpha: float = 0.5,
        *,
        channels: int | None = None,
        learnable: bool = True,
        axis: int | tuple[int, ...] | None = None,
        data_format: str = "channels_last",
        keepdims: bool = False,
        fill_value: float = 0.0,
        param_dtype: Any = jnp.float32,
    ):
        layout = _layout(
            axis, data_format, keepdims, fill_value, type(self).__name__, type(self).function
        )
        super().__init__(
            alpha, channels=channels, learnable=learnable, layout=layout, param_dtype=param_dtype
        )

    def _use(self, value: Any) -> Any:
        return jnp.clip(value, 0.0, 1.0)


class GatedMixedPool(nnx.Module):
    """Gated mixed pooling: the max weight is computed from the input, ``sigmoid(w . x)``.

    For each example and channel, ``alpha = sigmoid(sum_i w_i x_i)`` over the (unmasked) spatial
    positions i, then ``y = alpha max + (1 - alpha) mean`` (``gapjax.mixed_pool``). The gate
    weights w cover the whole feature map, so the spatial shape is fixed when the module is
    built: one map shared by all channels, or one per channel (the paper's "responsive" gate).

    Args:
      spatial_shape: the spatial shape of the inputs, e.g. ``(8, 8)``.
      channels: None for one gate map shared by all channels, else the number of channels.
      data_format: "channels_last" or "channels_first".
      keepdims, fill_value: as in ``gapjax.mixed_pool``.
      gate_init: initializer of w (zeros: alpha starts at 0.5).
      param_dtype: dtype of w.
      rngs: random streams for ``gate_init``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gapjax import nn
      >>> pool = nn.GatedMixedPool((2,), rngs=nnx.Rngs(0))  # w = 0: alpha = 0.5
      >>> pool(jnp.array([[[0.0], [4.0]]]))  # 0.5 * 4 + 0.5 * 2
      Array([[3.]], dtype=float32)

    References:
      Lee, Gallagher, Tu, "Generalizing Pooling Functions in Convolutional Neural Networks:
      Mixed, Gated, and Tree", AISTATS 2016, arXiv:1509.08985.
    """

    def __init__(
        self,
        spatial_shape: tuple[int, ...],
        *,
        channels: int | None = None,
        data_format: str = "channels_last",
        keepdims: bool = False,
        fill_value: float = 0.0,
        gate_init: Callable = nnx.initializers.zeros,
        param_dtype: Any = jnp.float32,
        rngs: rnglib.Rngs,
    ):
        owner = "GatedMixedPool"
        if isinstance(spatial_shape, numbers.Integral) or not isinstance(
            spatial_shape, tuple | list
        ):
            raise SettingTypeError(
                f"{owner}: spatial_shape must be a tuple of 1-3 positive ints, got "
                f"{spatial_shape!r}."
            )
        if not 1 <= len(spatial_shape) <= 3:
            raise ValueError(
                f"{owner}: spatial_shape must give 1-3 positive sizes, got {spatial_shape}."
            )
        spatial_shape = tuple(_positive_int(owner, "spatial_shape", v) for v in spatial_shape)
        self.layout = _layout(None, data_format, keepdims, fill_value, owner, pooling.mixed_pool)
        channels = _positive_int(owner, "channels", channels, optional=True)
        self.channels = channels
        width = 1 if channels is None else channels
        shape = (
            (*spatial_shape, width) if data_format == "channels_last" else (width, *spatial_shape)
        )
        self.gate = nnx.Param(gate_init(rngs.params(), shape, param_dtype))
        self.spatial_shape = spatial_shape

    def __call__(self, x: Input, *, mask: Mask = None) -> Float[Array, "..."]:
        """Mixed-pools x with a per-example, per-channel gate.

        Returns:
          The pooled values, e.g. ``(batch, channels)``.
        """
        x = jnp.asarray(x)
        fmt = self.layout["data_format"]
        spatial = x.shape[1:-1] if fmt == "channels_last" else x.shape[2:]
        if x.ndim < 3 or tuple(spatial) != self.spatial_shape:
            raise ValueError(
                f"GatedMixedPool: x of shape {x.shape} has spatial shape {tuple(spatial)}, but "
                f"the gate was built for spatial_shape={self.spatial_shape}."
            )
        if self.channels is not None:
            _check_width("GatedMixedPool", x, fmt, "channels", self.channels)
        layout = {k: self.layout[k] for k in ("data_format", "fill_value")}
        gated = _masked(x, mask, fmt, "GatedMixedPool")  # no NaN behind the mask in the gate
        logits = pooling.global_sum_pool(self.gate[...] * gated, mask=mask, **layout)
        alpha = jax.nn.sigmoid(logits.astype(jnp.float32))
        return pooling.mixed_pool(x, alpha, mask=mask, **self.layout)


_POSITIVE: dict[str, Callable] = {
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "exp": jnp.exp,
    "exp_sigmoid": lambda s: jnp.exp(jax.nn.sigmoid(s)),
    "relu": jax.nn.relu,
}


def positive(transform: str | Callable) -> Callable:
    """The positivity transform of GWAP's weight map, by name or as given.

    Implementations of GWAP disagree: "softplus", "sigmoid", "exp" (a softmax over
    positions), "exp_sigmoid" (exp of a sigmoid, as in one public implementation) or "relu".

    Args:
      transform: one of the names above, or a callable mapping logits to weights >= 0.

    Returns:
      The callable.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import nn
      >>> nn.positive("sigmoid")(jnp.array(0.0))
      Array(0.5, dtype=float32, weak_type=True)
    """
    if callable(transform):
        return transform
    if transform not in _POSITIVE:
        raise ValueError(
            f"transform must be one of {sorted(_POSITIVE)} or a callable, got {transform!r}."
        )
    return _POSITIVE[transform]


def _channels_last(x: jax.Array, data_format: str) -> jax.Array:
    return x if data_format == "channels_last" else jnp.moveaxis(x, 1, -1)


class GWAP(nnx.Module):
    """Global weighted average pooling with a learned, non-negative weight map.

    A 1x1 convolution of the input gives one logit per position (class-agnostic) or one per
    position and channel (class-specific: each class map weighs its own positions); a positivity
    transform turns the logits into weights and ``y = sum_i w_i x_i / sum_i w_i``
    (``gapjax.weighted_avg_pool``). ``transform="exp"`` is a softmax over positions, computed
    stably by ``gapjax.attention_pool``.

    Args:
      in_features: channels of the input.
      class_specific: one weight map per channel instead of one shared map.
      transform: "softplus" (default), "sigmoid", "exp", "exp_sigmoid", "relu" or a callable.
      data_format: "channels_last" or "channels_first"; 1-, 2- or 3-D spatial input.
      keepdims, fill_value: as in ``gapjax.weighted_avg_pool``.
      kernel_init, bias_init: initializers of the 1x1 convolution.
      param_dtype: dtype of its parameters.
      rngs: random streams for the initializers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gapjax import nn
      >>> pool = nn.GWAP(8, transform="sigmoid", rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 5, 5, 8))
      >>> pool(x).shape, pool.weight_map(x).shape
      ((2, 8), (2, 5, 5))

    References:
      Qiu, "Global Weighted Average Pooling Bridges Pixel-level Localization and Image-level
      Classification", 2018, arXiv:1809.08264.
    """

    def __init__(
        self,
        in_features: int,
        *,
        class_specific: bool = False,
        transform: str | Callable = "softplus",
        data_format: str = "channels_last",
        keepdims: bool = False,
        fill_value: float = 0.0,
        kernel_init: Callable = LECUN_NORMAL,
        bias_init: Callable = nnx.initializers.zeros,
        param_dtype: Any = jnp.float32,
        rngs: rnglib.Rngs,
    ):
        in_features = _positive_int("GWAP", "in_features", in_features)
        check_bool("GWAP", "class_specific", class_specific)
        self.transform_name = transform if isinstance(transform, str) else None
        try:
            self.transform = positive(transform)
        except ValueError as e:
            raise ValueError(f"GWAP: {e}") from None
        self.layout = _layout(
            None, data_format, keepdims, fill_value, "GWAP", pooling.weighted_avg_pool
        )
        self.in_features = in_features
        self.class_specific = class_specific
        self.score = nnx.Linear(
            in_features,
            in_features if class_specific else 1,
            kernel_init=kernel_init,
            bias_init=bias_init,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def logits(self, x: Input) -> Float[Array, "..."]:
        """The 1x1 convolution's output, before the positivity transform.

        Returns:
          ``(batch, *spatial)`` (class-agnostic) or x's shape (class-specific).
        """
        fmt = self.layout["data_format"]
        x = jnp.asarray(x)
        _check_width("GWAP", x, fmt, "in_features", self.in_features)
        s = self.score(_channels_last(x, fmt))
        if not self.class_specific:
            return s[..., 0]
        return s if fmt == "channels_last" else jnp.moveaxis(s, -1, 1)

    def weight_map(self, x: Input) -> Float[Array, "..."]:
        """The non-negative weights, for localization (not normalized for "exp").

        Returns:
          ``(batch, *spatial)`` (class-agnostic) or x's shape (class-specific).
        """
        return self.transform(self.logits(x))

    def __call__(self, x: Input, *, mask: Mask = None) -> Float[Array, "..."]:
        """Pools x with the learned weights.

        Returns:
          The pooled values, e.g. ``(batch, channels)``.
        """
        x = _masked(x, mask, self.layout["data_format"], "GWAP")
        s = self.logits(x)
        if self.transform_name == "exp":
            return pooling.attention_pool(x, s, mask=mask, **self.layout)
        return pooling.weighted_avg_pool(x, self.transform(s), mask=mask, **self.layout)


class AttentionPool(nnx.Module):
    """Multi-head attention pooling with learned queries (a latent-query attention head).

    Per head h: keys ``k = x W_k``, values ``v = x W_v`` (1x1 convolutions), scores
    ``s_h = k_h . q_h / sqrt(d)`` with a learned query ``q_h``; the values are pooled with a
    softmax over positions (``gapjax.attention_pool``, masks supported), the heads concatenated
    and projected: ``y = concat_h(sum_i softmax(s_h)_i v_hi) W_o``. No positional embedding
    is added (CLIP's AttnPool2d adds one, and uses the mean token as its query).

    Args:
      in_features: channels of the input.
      num_heads: number of heads; ``qkv_features`` must be divisible by it.
      qkv_features: width of keys and values (default: in_features).
      out_features: width of the output (default: in_features); None.
      data_format: "channels_last" or "channels_first".
      keepdims, fill_value: as in ``gapjax.attention_pool``.
      dtype: computation dtype of the projections (None: Flax's promotion of input and
        parameters, so bfloat16 input gives a float32 result; pass ``jnp.bfloat16`` to keep it).
      param_dtype: dtype of the parameters.
      rngs: random streams for the initializers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gapjax import nn
      >>> pool = nn.AttentionPool(16, num_heads=4, out_features=10, rngs=nnx.Rngs(0))
      >>> pool(jnp.ones((2, 7, 7, 16))).shape
      (2, 10)

    References:
      Lee et al., "Set Transformer", ICML 2019, arXiv:1810.00825 (pooling by multihead
      attention); Radford et al., "CLIP", 2021, arXiv:2103.00020.
    """

    def __init__(
        self,
        in_features: int,
        *,
        num_heads: int = 1,
        qkv_features: int | None = None,
        out_features: int | None = None,
        data_format: str = "channels_last",
        keepdims: bool = False,
        fill_value: float = 0.0,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: rnglib.Rngs,
    ):
        owner = "AttentionPool"
        in_features = _positive_int(owner, "in_features", in_features)
        num_heads = _positive_int(owner, "num_heads", num_heads)
        qkv_features = _positive_int(owner, "qkv_features", qkv_features, optional=True)
        out_features = _positive_int(owner, "out_features", out_features, optional=True)
        qkv_features = in_features if qkv_features is None else qkv_features
        if qkv_features % num_heads:
            raise ValueError(
                f"AttentionPool: qkv_features={qkv_features} must be divisible by "
                f"num_heads={num_heads} (> 0)."
            )
        self.in_features = in_features
        self.num_heads = num_heads
        self.head_dim = qkv_features // num_heads
        self.layout = _layout(
            None, data_format, keepdims, fill_value, owner, pooling.attention_pool
        )
        dense = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.key = nnx.Linear(in_features, qkv_features, **dense)
        self.value = nnx.Linear(in_features, qkv_features, **dense)
        self.out = nnx.Linear(
            qkv_features, in_features if out_features is None else out_features, **dense
        )
        init = nnx.initializers.normal(1.0 / math.sqrt(self.head_dim))
        self.query = nnx.Param(init(rngs.params(), (num_heads, self.head_dim), param_dtype))

    def scores(self, x: Input) -> Float[Array, "..."]:
        """The attention logits of each head at each position.

        Returns:
          ``(batch, *spatial, num_heads)``.
        """
        x = jnp.asarray(x)
        fmt = self.layout["data_format"]
        _check_width("AttentionPool", x, fmt, "in_features", self.in_features)
        return self._scores(_channels_last(x, fmt))

    def _scores(self, x: jax.Array) -> jax.Array:
        """``scores`` of a channels-last x."""
        k = self.key(x).reshape(*x.shape[:-1], self.num_heads, self.head_dim)
        return jnp.einsum("...hd,hd->...h", k, self.query[...]) / math.sqrt(self.head_dim)

    def __call__(self, x: Input, *, mask: Mask = None) -> Float[Array, "..."]:
        """Pools x by attention.

        Returns:
          ``(batch, out_features)`` (with ``keepdims``, size-1 spatial axes kept).
        """
        fmt = self.layout["data_format"]
        x = _masked(x, mask, fmt, "AttentionPool")
        _check_width("AttentionPool", x, fmt, "in_features", self.in_features)
        x = _channels_last(x, fmt)
        v = self.value(x)
        s = jnp.repeat(self._scores(x), self.head_dim, axis=-1)  # one score per value channel
        layout = {**self.layout, "data_format": "channels_last"}
        pooled = pooling.attention_pool(v, s, mask=mask, **layout)
        y = self.out(pooled)
        if self.layout["keepdims"] and self.layout["data_format"] == "channels_first":
            y = jnp.moveaxis(y, -1, 1)
        return y


# --------------------------------------------------------------------------------------------
# Stochastic pools: nnx.Rngs in training, deterministic in evaluation.
# --------------------------------------------------------------------------------------------


class _Stochastic(_FunctionModule):
    """Draws a key from its stream when sampling, as ``nnx.Dropout`` does."""

    call_args = ("mask", "key", "train")

    def __init__(
        self,
        *args: Any,
        deterministic: bool = False,
        rng_collection: str = "dropout",
        rngs: rnglib.Rngs | rnglib.RngStream | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        check_bool(type(self).__name__, "deterministic", deterministic)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if isinstance(rngs, rnglib.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, rnglib.RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = nnx.data(None)
        else:
            raise TypeError(f"rngs must be an nnx.Rngs, an RngStream or None, got {type(rngs)}.")

    def set_view(self, deterministic: bool | None = None) -> None:
        """Sets evaluation (True) or training (False) mode; used by ``nnx.view``.

        Returns:
          None.
        """
        if deterministic is not None:
            self.deterministic = deterministic

    def _pool(self, x: Any, mask: Any, deterministic: bool | None, rngs: Rngs) -> jax.Array:
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic:
            return self._apply(x, **({} if mask is None else {"mask": mask}), train=False)
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, rnglib.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, rnglib.RngStream):
            key = rngs()
        elif isinstance(rngs, jax.Array):
            key = rngs
        else:
            raise ValueError(
                f"{type(self).__name__}: sampling (deterministic=False) needs random numbers: "
                "pass rngs=nnx.Rngs(...) when building the module or calling it, or call "
                "model.eval() for the deterministic evaluation rule."
            )
        return self._apply(x, **({} if mask is None else {"mask": mask}), key=key, train=True)


class GlobalStochasticPool(_Stochastic):
    """Global stochastic pooling: samples in training, ``sum a^2 / sum a`` in evaluation.

    Module form of ``gapjax.global_stochastic_pool``. In training (``deterministic=False``,
    the default, or after ``model.train()``) each output samples one position with probability
    proportional to its activation, with a key drawn from ``rngs`` (collection
    ``rng_collection``, default "dropout"); ``model.eval()`` switches to the deterministic rule.

    Args:
      deterministic: evaluation mode.
      rng_collection: the ``nnx.Rngs`` stream to draw from.
      rngs: ``nnx.Rngs`` (or a stream); may instead be given at call time.
      **settings: ``axis``, ``data_format``, ``keepdims``, ``fill_value``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gapjax import nn
      >>> pool = nn.GlobalStochasticPool(rngs=nnx.Rngs(0))
      >>> x = jnp.array([[[1.0], [3.0]]])
      >>> bool(pool(x)[0, 0] in (1.0, 3.0))
      True
      >>> pool.eval(); pool(x)  # (1 + 9) / 4
      Array([[2.5]], dtype=float32)

    References:
      Zeiler, Fergus, "Stochastic Pooling for Regularization of Deep Convolutional Neural
      Networks", ICLR 2013, arXiv:1301.3557.
    """

    function = staticmethod(pooling.global_stochastic_pool)

    def __call__(
        self,
        x: Input,
        *,
        mask: Mask = None,
        deterministic: bool | None = None,
        rngs: Rngs = None,
    ) -> Float[Array, "..."]:
        """Pools x, sampling unless deterministic.

        Returns:
          The pooled values, e.g. ``(batch, channels)``.
        """
        return self._pool(x, mask, deterministic, rngs)


class StochasticPool(_Stochastic):
    """Windowed stochastic pooling (Caffe's semantics): samples in training, deterministic in eval.

    Module form of ``gapjax.stochastic_pool``: settings as that function (``kernel_size``,
    ``stride``, ``padding``, ``ceil_mode``, ``convention``, ``data_format``); randomness and
    modes as ``GlobalStochasticPool``.

    Args:
      *args, **settings: the function's settings, e.g. ``StochasticPool(3, stride=2)``.
      deterministic: evaluation mode.
      rng_collection: the ``nnx.Rngs`` stream to draw from.
      rngs: ``nnx.Rngs`` (or a stream); may instead be given at call time.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gapjax import nn
      >>> pool = nn.StochasticPool(2, rngs=nnx.Rngs(0))
      >>> pool(jnp.ones((1, 4, 4, 3))).shape
      (1, 2, 2, 3)

    References:
      Zeiler, Fergus, "Stochastic Pooling for Regularization of Deep Convolutional Neural
      Networks", ICLR 2013, arXiv:1301.3557.
    """

    function = staticmethod(pooling.stochastic_pool)

    def __call__(
        self, x: Input, *, deterministic: bool | None = None, rngs: Rngs = None
    ) -> Float[Array, "..."]:
        """Pools x over windows, sampling unless deterministic.

        Returns:
          The pooled array.
        """
        return self._pool(x, None, deterministic, rngs)
