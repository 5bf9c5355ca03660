"""Class activation maps (CAM) and Grad-CAM.

- ``class_activation_maps``: for a GAP head (NIN) the class maps themselves; for a GAP + linear
  head ``M_c = sum_k w_kc f_k``. The class score is the mean of its map, plus the bias.
- ``grad_cam``: ``L_c = relu(sum_k alpha_ck A_k)`` with ``alpha_ck = mean_xy dy_c / dA_k``, for
  any NNX model and any of its layers (named by its attribute path); ``grad_cam_from_head``
  for a model already split into activations and a head function.

All are plain JAX functions: they work under ``jax.jit`` (for an NNX model, through
``nnx.split``/``nnx.merge`` or ``nnx.jit``) and ``jax.vmap``. Maps are channels-last,
``(batch, *spatial, classes)``, and can be upsampled to the input size with ``size``.
"""

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Shaped

__all__ = ["class_activation_maps", "grad_cam", "grad_cam_from_head", "upsample"]

Target = Shaped[ArrayLike, "..."] | int | None  # checked by _targets, with a clear message


def upsample(
    maps: Float[ArrayLike, "batch *spatial channels"],
    size: Sequence[numbers.Integral],
    *,
    method: str = "bilinear",
) -> Float[Array, "batch *size channels"]:
    """Resizes channels-last maps to a spatial ``size`` (``jax.image.resize``).

    Args:
      maps: ``(batch, *spatial, channels)``.
      size: the new spatial shape, e.g. the input image's ``(height, width)``.
      method: "nearest", "bilinear" (default), "cubic", "lanczos3"...

    Returns:
      ``(batch, *size, channels)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax.cam import upsample
      >>> upsample(jnp.ones((1, 8, 8, 10)), (32, 32)).shape
      (1, 32, 32, 10)
    """
    maps = jnp.asarray(maps)
    if isinstance(size, numbers.Integral) or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in size
    ):
        raise ValueError(f"upsample: size must be a tuple of positive ints, got {size!r}.")
    size = tuple(int(s) for s in size)
    if len(size) != maps.ndim - 2:
        raise ValueError(
            f"upsample: size {size} must give one length per spatial axis of maps of shape "
            f"{maps.shape} ({maps.ndim - 2})."
        )
    return jax.image.resize(maps, (maps.shape[0], *size, maps.shape[-1]), method=method)


def class_activation_maps(
    features: Float[ArrayLike, "batch *spatial channels"],
    weights: Float[ArrayLike, "_channels classes"] | None = None,
    *,
    size: Sequence[int] | None = None,
    method: str = "bilinear",
) -> Float[Array, "batch *out classes"]:
    """Class activation maps: ``M_c(x, y) = sum_k w_kc f_k(x, y)``.

    For a GAP head (NIN: one map per class, then global average pooling) pass the class maps
    and no weights: they are the CAMs. For a GAP + linear head (``logits = GAP(f) W + b``) pass
    the last feature maps and the linear layer's kernel ``W`` (``(channels, classes)``, Flax's
    layout); then each class score equals the mean of its map plus its bias. Without
    ``size`` the maps keep the features' resolution (where that identity holds exactly).

    Args:
      features: ``(batch, *spatial, channels)``, channels last.
      weights: ``(channels, classes)``, or None for a GAP head.
      size: upsample the maps to this spatial shape (e.g. the input's ``(height, width)``).
      method: interpolation for ``size`` (``jax.image.resize``).

    Returns:
      ``(batch, *spatial, classes)``, or ``(batch, *size, classes)`` with ``size``.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax.cam import class_activation_maps
      >>> f = jnp.ones((1, 2, 2, 3))
      >>> w = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, -1.0]])
      >>> class_activation_maps(f, w)[0, :, :, 0]  # sum of the three maps
      Array([[3., 3.],
             [3., 3.]], dtype=float32)

    References:
      Zhou, Khosla, Lapedriza, Oliva, Torralba, "Learning Deep Features for Discriminative
      Localization", CVPR 2016, arXiv:1512.04150.
    """
    features = jnp.asarray(features)
    if features.ndim < 3:
        raise ValueError(
            "class_activation_maps: features must be (batch, *spatial, channels), got shape "
            f"{features.shape}."
        )
    maps = features
    if weights is not None:
        weights = jnp.asarray(weights)
        if weights.ndim != 2 or weights.shape[0] != features.shape[-1]:
            raise ValueError(
                f"class_activation_maps: weights of shape {weights.shape} must be "
                f"(channels, classes) with channels = {features.shape[-1]} (features of shape "
                f"{features.shape})."
            )
        maps = jnp.einsum("...k,kc->...c", features, weights)
    return maps if size is None else upsample(maps, size, method=method)


def _combine(activations: jax.Array, grads: jax.Array, relu: bool) -> jax.Array:
    """Grad-CAM's map from the activations and the class score's gradient w.r.t. them."""
    spatial = tuple(range(1, activations.ndim - 1))
    alpha = jnp.mean(grads, axis=spatial, keepdims=True)  # (batch, 1.., channels)
    cam = jnp.sum(alpha * activations, axis=-1)
    return jax.nn.relu(cam) if relu else cam


def _targets(logits: jax.Array, target: Any) -> jax.Array:
    if target is None:
        return jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
    target = jnp.asarray(target)
    if target.ndim > 1 or not jnp.issubdtype(target.dtype, jnp.integer):
        raise ValueError(
            f"grad_cam: target must be an int or (batch,) ints, got {target.dtype} of shape "
            f"{target.shape}."
        )
    return jnp.broadcast_to(target, logits.shape[:1])


def _score(logits: jax.Array, target: Any) -> tuple[jax.Array, jax.Array]:
    """Sum over the batch of each example's target logit (examples do not interact)."""
    if logits.ndim != 2:
        raise ValueError(f"grad_cam: the model must return (batch, classes), got {logits.shape}.")
    t = _targets(logits, target)
    return jnp.sum(jnp.take_along_axis(logits, t[:, None], axis=1)), t


def _finish(cam: jax.Array, size: Any, method: str) -> jax.Array:
    return cam if size is None else upsample(cam[..., None], size, method=method)[..., 0]


def grad_cam_from_head(
    head: Callable[[jax.Array], jax.Array],
    activations: Float[ArrayLike, "batch *spatial channels"],
    *,
    target: Target = None,
    size: Sequence[int] | None = None,
    relu: bool = True,
    method: str = "bilinear",
) -> Float[Array, "batch ..."]:
    """Grad-CAM for a model split at a layer: ``head`` maps that layer's activations to logits.

    ``L_c = relu(sum_k alpha_ck A_k)`` with ``alpha_ck = mean_xy dy_c / dA_k(x, y)``.

    Args:
      head: the rest of the model, ``(batch, *spatial, channels) -> (batch, classes)``.
      activations: the layer's output A, channels last.
      target: the class per example (an int or ``(batch,)``); None takes the predicted class.
      size: upsample the maps to this spatial shape.
      relu: apply the final ReLU (the paper's); False keeps negative evidence.
      method: interpolation for ``size``.

    Returns:
      ``(batch, *spatial)``, or ``(batch, *size)`` with ``size``.

    Example:
      >>> import jax.numpy as jnp
      >>> from gapjax import global_avg_pool
      >>> from gapjax.cam import grad_cam_from_head
      >>> a = jnp.arange(8.0).reshape(1, 2, 2, 2)
      >>> grad_cam_from_head(global_avg_pool, a, target=1)  # alpha = (0, 1/4)
      Array([[[0.25, 0.75],
              [1.25, 1.75]]], dtype=float32)

    References:
      Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
      Localization", ICCV 2017, arXiv:1610.02391.
    """
    activations = jnp.asarray(activations)

    def score(a: jax.Array) -> jax.Array:
        return _score(head(a), target)[0]

    grads = jax.grad(score)(activations)
    return _finish(_combine(activations, grads, relu), size, method)


class _Tap(nnx.Module):
    """Stands in for a layer: returns its output plus ``delta`` and records that sum."""

    def __init__(self, layer: Any, box: dict):
        self.layer = layer
        self.box = box

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.layer(*args, **kwargs) + self.box["delta"]
        self.box["out"] = out
        return out


def _locate(model: Any, layer: str) -> tuple[Any, Any]:
    """The parent object and the attribute name (or list index) of ``layer`` ("blocks.2")."""
    parts = [p for p in layer.replace("/", ".").split(".") if p]
    if not parts:
        raise ValueError(f"grad_cam: layer must name a submodule, got {layer!r}.")
    parent: Any = model
    for i, part in enumerate(parts):
        key: Any = int(part) if part.isdigit() else part
        try:
            child = parent[key] if isinstance(key, int) else getattr(parent, key)
        except (AttributeError, IndexError, TypeError):
            raise ValueError(
                f"grad_cam: {type(model).__name__} has no layer {layer!r} "
                f"(no {'.'.join(parts[: i + 1])!r})."
            ) from None
        if i == len(parts) - 1:
            if not callable(child):
                raise ValueError(f"grad_cam: layer {layer!r} is not callable.")
            return parent, key
        parent = child
    raise AssertionError("unreachable")


def _put(parent: Any, key: Any, value: Any) -> None:
    if isinstance(key, int):
        parent[key] = value
    else:
        setattr(parent, key, value)


def grad_cam(
    model: nnx.Module,
    x: Shaped[ArrayLike, "..."],
    *,
    layer: str,
    target: Target = None,
    size: Sequence[int] | None = None,
    relu: bool = True,
    method: str = "bilinear",
    **call_kwargs: Any,
) -> Float[Array, "batch ..."]:
    """Grad-CAM for any NNX model at any layer, named by its attribute path.

    The layer (e.g. ``"blocks.2"`` for NIN's last mlpconv block, ``"blocks.1.layers.0"`` for
    one convolution) is replaced, in a copy of the model, by a tap that records its output A
    and lets the gradient of the class score flow to it; the model itself is untouched. The layer
    must return ``(batch, *spatial, channels)``; call ``model.eval()`` first so that dropout
    does not sample (and examples do not interact).

    Args:
      model: an NNX module returning logits ``(batch, classes)``.
      x: its input.
      layer: the attribute path of the layer, dots (or slashes) between names and list indices.
      target: the class per example (an int or ``(batch,)``); None takes the predicted class.
      size: upsample the maps to this spatial shape (e.g. the input's ``(height, width)``).
      relu: apply the final ReLU.
      method: interpolation for ``size``.
      **call_kwargs: passed to the model's call.

    Returns:
      ``(batch, *spatial)`` at the layer's resolution, or ``(batch, *size)`` with ``size``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gapjax.cam import grad_cam
      >>> from gapjax.models import nin
      >>> model = nin.nin_digits(rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> grad_cam(model, jnp.ones((2, 8, 8, 1)), layer="blocks.1", size=(8, 8)).shape
      (2, 8, 8)

    References:
      Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
      Localization", ICCV 2017, arXiv:1610.02391.
    """
    _locate(model, layer)  # a clear error before any work
    # The tap goes into a copy made at the current trace level: the caller's model is never
    # mutated, so this works inside jit and vmap even when the model is closed over.
    model = nnx.merge(*nnx.split(model))
    parent, key = _locate(model, layer)
    original = parent[key] if isinstance(key, int) else getattr(parent, key)
    box: dict[str, Any] = {"delta": 0.0}
    _put(parent, key, _Tap(original, box))

    def run(delta: Any) -> tuple[jax.Array, jax.Array]:
        box["delta"] = delta
        score, _ = _score(model(x, **call_kwargs), target)
        return score, box["out"]

    shape = jax.eval_shape(lambda: run(0.0)[1])
    delta = jnp.zeros(shape.shape, shape.dtype)
    grads, activations = jax.grad(run, has_aux=True)(delta)
    box.clear()
    if activations.ndim < 3:
        raise ValueError(
            f"grad_cam: layer {layer!r} returned shape {activations.shape}; Grad-CAM needs "
            "(batch, *spatial, channels) feature maps."
        )
    return _finish(_combine(activations, grads, relu), size, method)
