"""Flax Linen versions of the global pooling layers, for codebases still on Linen.

Thin wrappers, like their NNX siblings in ``gapjax.nn``: the fields are the function's settings
(``axis``, ``data_format``, ``keepdims``, ``fill_value`` and the method's own), the call takes
the data and a mask, and the math is the function's. Learnable settings (GeM's p, LSE's r,
mixed pooling's alpha, GWAP's 1x1 convolution) are Linen params; the stochastic pool draws
from the "dropout" RNG stream unless ``deterministic``::

    import flax.linen as nn
    from gapjax.nn import linen as gl

    class Head(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(gl.GeMPool(channels=x.shape[-1])(x))
"""

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Shaped

from gapjax import pooling
from gapjax.nn.pooling import _masked, _positive_int, positive
from gapjax.pooling._common import check_bool

__all__ = [
    "GWAP",
    "AvgMaxPool",
    "CatAvgMaxPool",
    "GeMPool",
    "GlobalAvgPool",
    "GlobalLPPool",
    "GlobalMaxPool",
    "GlobalMinPool",
    "GlobalStochasticPool",
    "GlobalSumPool",
    "LSEPool",
    "MixedPool",
    "SoftPool",
    "TopKPool",
    "WeightedAvgPool",
]

Input = Shaped[ArrayLike, "..."]
Mask = Shaped[ArrayLike, "..."] | None
_MODULE_FIELDS = ("parent", "name")


class _Global(nn.Module):
    """Shared layout fields; ``function`` is called with every field as a keyword."""

    function: ClassVar[Callable]
    axis: int | tuple[int, ...] | None = None
    data_format: str = "channels_last"
    keepdims: bool = False
    fill_value: float = 0.0

    def __post_init__(self) -> None:
        """Checks the settings when the module is built, as the NNX modules do."""
        try:
            self._check()
        except (TypeError, ValueError) as e:
            raise type(e)(f"{type(self).__name__}: {e}") from None
        super().__post_init__()

    def _check(self) -> None:
        fn = getattr(type(self), "function", pooling.global_avg_pool)
        fn.settings(**self.settings())

    def settings(self) -> dict[str, Any]:
        """The dataclass fields, as the function's keyword arguments.

        Returns:
          A dict of settings.
        """
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _MODULE_FIELDS
        }

    def layout(self) -> dict[str, Any]:
        """The four layout fields every global pool shares.

        Returns:
          ``{"axis", "data_format", "keepdims", "fill_value"}``.
        """
        return {k: getattr(self, k) for k in ("axis", "data_format", "keepdims", "fill_value")}

    def __call__(self, x: Input, *, mask: Mask = None) -> Shaped[Array, "..."]:
        """Pools x with the module's settings.

        Returns:
          The function's result, e.g. ``(batch, channels)``.
        """
        return type(self).function(x, mask=mask, **self.settings())


def _doc(fn: Callable, extra: str = "") -> str:
    return (
        f"Linen module form of ``gapjax.{fn.__name__}``; its fields are the function's "
        f"settings.{extra}\n\n    Example:\n"
        "      >>> import jax, jax.numpy as jnp\n"
        "      >>> from gapjax.nn import linen as gl\n"
        f"      >>> gl.{_NAMES[fn.__name__]}{_EXAMPLES[fn.__name__]}\n"
    )


_NAMES = {
    "global_avg_pool": "GlobalAvgPool",
    "global_sum_pool": "GlobalSumPool",
    "global_max_pool": "GlobalMaxPool",
    "global_min_pool": "GlobalMinPool",
    "global_lp_pool": "GlobalLPPool",
    "avgmax_pool": "AvgMaxPool",
    "catavgmax_pool": "CatAvgMaxPool",
    "soft_pool": "SoftPool",
    "topk_pool": "TopKPool",
}
_EXAMPLES = {
    "global_avg_pool": "().apply({}, jnp.ones((2, 4, 4, 3))).shape\n      (2, 3)",
    "global_sum_pool": "().apply({}, jnp.ones((1, 2, 2, 1)))\n      Array([[4.]], dtype=float32)",
    "global_max_pool": "().apply({}, jnp.array([[[1.0], [3.0]]]))\n"
    "      Array([[3.]], dtype=float32)",
    "global_min_pool": "().apply({}, jnp.array([[[1.0], [3.0]]]))\n"
    "      Array([[1.]], dtype=float32)",
    "global_lp_pool": "(p=2.0).apply({}, jnp.array([[[3.0], [4.0]]]))\n"
    "      Array([[5.]], dtype=float32)",
    "avgmax_pool": "().apply({}, jnp.array([[[0.0], [4.0]]]))\n      Array([[3.]], dtype=float32)",
    "catavgmax_pool": "().apply({}, jnp.ones((2, 4, 4, 3))).shape\n      (2, 6)",
    "soft_pool": "().apply({}, jnp.full((1, 3, 3, 2), 2.0))\n"
    "      Array([[2., 2.]], dtype=float32)",
    "topk_pool": "(k=2).apply({}, jnp.array([[[1.0], [5.0], [2.0], [4.0]]]))\n"
    "      Array([[4.5]], dtype=float32)",
}


class GlobalAvgPool(_Global):
    __doc__ = _doc(pooling.global_avg_pool)
    function = staticmethod(pooling.global_avg_pool)


class GlobalSumPool(_Global):
    __doc__ = _doc(pooling.global_sum_pool)
    function = staticmethod(pooling.global_sum_pool)


class GlobalMaxPool(_Global):
    __doc__ = _doc(pooling.global_max_pool)
    function = staticmethod(pooling.global_max_pool)


class GlobalMinPool(_Global):
    __doc__ = _doc(pooling.global_min_pool)
    function = staticmethod(pooling.global_min_pool)


class GlobalLPPool(_Global, kw_only=True):
    __doc__ = _doc(pooling.global_lp_pool, " ``p`` is fixed.")
    function = staticmethod(pooling.global_lp_pool)
    p: float = 2.0


class AvgMaxPool(_Global):
    __doc__ = _doc(pooling.avgmax_pool)
    function = staticmethod(pooling.avgmax_pool)


class CatAvgMaxPool(_Global):
    __doc__ = _doc(pooling.catavgmax_pool)
    function = staticmethod(pooling.catavgmax_pool)


class SoftPool(_Global):
    __doc__ = _doc(pooling.soft_pool)
    function = staticmethod(pooling.soft_pool)


class TopKPool(_Global, kw_only=True):
    __doc__ = _doc(pooling.topk_pool)
    function = staticmethod(pooling.topk_pool)
    k: int | float
    k_min: int | float = 0
    alpha: float = 1.0
    halve: bool = False


class WeightedAvgPool(_Global):
    """Linen module form of ``gapjax.weighted_avg_pool``: weights are given at call time.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax.nn import linen as gl
      >>> gl.WeightedAvgPool().apply({}, jnp.array([[[2.0], [6.0]]]), jnp.array([[3.0, 1.0]]))
      Array([[3.]], dtype=float32)
    """

    def __call__(
        self, x: Input, weights: Shaped[ArrayLike, "..."], *, mask: Mask = None
    ) -> Float[Array, "..."]:
        """Pools x with the given weights.

        Returns:
          ``sum w x / sum w`` per channel, e.g. ``(batch, channels)``.
        """
        return pooling.weighted_avg_pool(x, weights, mask=mask, **self.settings())


class _Learnable(_Global, kw_only=True):
    """A scalar or per-channel hyperparameter that is a Linen param (or fixed)."""

    channels: int | None = None
    learnable: bool = True
    param_dtype: Any = jnp.float32

    def _check(self) -> None:
        owner = type(self).__name__
        _positive_int(owner, "channels", self.channels, optional=True)
        check_bool(owner, "learnable", self.learnable)
        type(self).function.settings(**self.initial(), **self.settings())

    def initial(self) -> dict[str, Any]:
        """The initial value of the learned setting, as the function's keyword argument.

        Returns:
          A one-entry dict, e.g. ``{"p": 3.0}``.
        """
        return {}

    def _param(self, name: str, value: float) -> Any:
        if not self.learnable:
            return value
        shape = () if self.channels is None else (self.channels,)
        return self.param(name, lambda _, s: jnp.full(s, value, self.param_dtype), shape)

    def settings(self) -> dict[str, Any]:
        """The layout fields only (the learned value is passed separately).

        Returns:
          A dict of settings.
        """
        return self.layout()


class GeMPool(_Learnable, kw_only=True):
    """GeM pooling with a learnable p (param "p", init ``p_init``, scalar or per channel).

    Linen form of ``gapjax.nn.GeMPool``; ``learnable=False`` keeps p fixed at ``p_init``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gapjax.nn import linen as gl
      >>> pool = gl.GeMPool(channels=3)
      >>> params = pool.init(jax.random.key(0), jnp.ones((2, 4, 4, 3)))
      >>> params["params"]["p"]
      Array([3., 3., 3.], dtype=float32)
    """

    function = staticmethod(pooling.gem_pool)
    p_init: float = 3.0
    eps: float = 1e-6

    def initial(self) -> dict[str, Any]:
        return {"p": self.p_init, "eps": self.eps}

    @nn.compact
    def __call__(self, x: Input, *, mask: Mask = None) -> Float[Array, "..."]:
        """GeM-pools x.

        Returns:
          The pooled values, e.g. ``(batch, channels)``.
        """
        p = self._param("p", self.p_init)
        return pooling.gem_pool(x, p, eps=self.eps, mask=mask, **self.settings())


class LSEPool(_Learnable, kw_only=True):
    """LSE pooling with a learnable r (param "r", init ``r_init``, scalar or per channel).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gapjax.nn import linen as gl
      >>> x = jnp.full((1, 2, 2, 1), 3.0)
      >>> pool = gl.LSEPool(r_init=1.0)
      >>> pool.apply(pool.init(jax.random.key(0), x), x)
      Array([[3.]], dtype=float32)
    """

    function = staticmethod(pooling.lse_pool)
    r_init: float = 5.0

    def initial(self) -> dict[str, Any]:
        return {"r": self.r_init}

    @nn.compact
    def __call__(self, x: Input, *, mask: Mask = None) -> Float[Array, "..."]:
        """LSE-pools x.

        Returns:
          The pooled values, e.g. ``(batch, channels)``.
        """
        return pooling.lse_pool(x, self._param("r", self.r_init), mask=mask, **self.settings())


class MixedPool(_Learnable, kw_only=True):
    """Mixed pooling with a learnable alpha (param "alpha", clipped to [0, 1] when used).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gapjax.nn import linen as gl
      >>> x = jnp.array([[[0.0], [4.0]]])
      >>> pool = gl.MixedPool(alpha_init=0.25)
      >>> pool.apply(pool.init(jax.random.key(0), x), x)
      Array([[2.5]], dtype=float32)
    """

    function = staticmethod(pooling.mixed_pool)
    alpha_init: float = 0.5

    def initial(self) -> dict[str, Any]:
        return {"alpha": self.alpha_init}

    @nn.compact
    def __call__(self, x: Input, *, mask: Mask = None) -> Float[Array, "..."]:
        """Mixed-pools x.

        Returns:
          The pooled values, e.g. ``(batch, channels)``.
        """
        alpha = jnp.clip(self._param("alpha", self.alpha_init), 0.0, 1.0)
        return pooling.mixed_pool(x, alpha, mask=mask, **self.settings())


class GWAP(_Global, kw_only=True):
    """Global weighted average pooling with a learned weight map (Linen form of ``nn.GWAP``).

    A 1x1 convolution (``nn.Dense`` on the channel axis, submodule "score") gives the logits,
    ``transform`` makes them non-negative ("exp" is a stable softmax over positions).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gapjax.nn import linen as gl
      >>> x = jnp.ones((2, 5, 5, 8))
      >>> pool = gl.GWAP(transform="sigmoid")
      >>> pool.apply(pool.init(jax.random.key(0), x), x).shape
      (2, 8)
    """

    class_specific: bool = False
    transform: str | Callable = "softplus"
    param_dtype: Any = jnp.float32

    def _check(self) -> None:
        check_bool("GWAP", "class_specific", self.class_specific)
        positive(self.transform)
        pooling.weighted_avg_pool.settings(**self.layout())

    @nn.compact
    def __call__(self, x: Input, *, mask: Mask = None) -> Float[Array, "..."]:
        """Pools x with the learned weights.

        Returns:
          The pooled values, e.g. ``(batch, channels)``.
        """
        if self.axis is not None:
            raise ValueError("GWAP: use data_format; axis is not supported.")
        x = _masked(x, mask, self.data_format, "GWAP")  # no NaN behind the mask in the Dense
        last = self.data_format == "channels_last"
        channels = x.shape[-1] if last else x.shape[1]
        h = x if last else jnp.moveaxis(x, 1, -1)
        s = nn.Dense(
            channels if self.class_specific else 1, param_dtype=self.param_dtype, name="score"
        )(h)
        if not self.class_specific:
            s = s[..., 0]
        elif not last:
            s = jnp.moveaxis(s, -1, 1)
        layout = self.layout()  # axis is None here
        if self.transform == "exp":
            return pooling.attention_pool(x, s, mask=mask, **layout)
        return pooling.weighted_avg_pool(x, positive(self.transform)(s), mask=mask, **layout)


class GlobalStochasticPool(_Global, kw_only=True):
    """Global stochastic pooling: samples with the "dropout" RNG unless ``deterministic``.

    As with ``flax.linen.Dropout``, ``deterministic`` must be given as a field or in the call.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gapjax.nn import linen as gl
      >>> x = jnp.array([[[1.0], [3.0]]])
      >>> gl.GlobalStochasticPool(deterministic=True).apply({}, x)
      Array([[2.5]], dtype=float32)
      >>> pool = gl.GlobalStochasticPool(deterministic=False)
      >>> y = pool.apply({}, x, rngs={"dropout": jax.random.key(0)})
      >>> bool(y[0, 0] in (1.0, 3.0))
      True
    """

    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def _check(self) -> None:
        if self.deterministic is not None:
            check_bool("GlobalStochasticPool", "deterministic", self.deterministic)
        pooling.global_stochastic_pool.settings(**self.layout())

    def __call__(
        self, x: Input, *, mask: Mask = None, deterministic: bool | None = None
    ) -> Float[Array, "..."]:
        """Pools x, sampling unless deterministic (the call's flag wins over the field's).

        Returns:
          The pooled values, e.g. ``(batch, channels)``.
        """
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        settings = self.layout()
        if deterministic:
            return pooling.global_stochastic_pool(x, train=False, mask=mask, **settings)
        key = self.make_rng(self.rng_collection)
        return pooling.global_stochastic_pool(x, key=key, train=True, mask=mask, **settings)
