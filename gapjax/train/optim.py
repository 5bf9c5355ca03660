"""NIN's solver in optax: Caffe's SGD with per-parameter learning rates and coupled weight decay.

Caffe updates ``v <- momentum v + lr * mult * (g + weight_decay * w)``, ``w <- w - v``: the
learning rate (with the parameter's multiplier: biases x2, the last layer x0.1) scales the
gradient before it enters the momentum buffer, and the L2 decay is added to the gradient of
weights only (REFERENCE.md section 3).
"""

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["caffe_sgd", "learning_rate_schedule", "lr_multipliers", "path_names"]


def _check(value: Any, name: str, fn: str, *, low: float, high: float = math.inf) -> None:
    """A finite real (not a bool) in [low, high); ValueError naming the function and argument.
    Scalar arrays are read as numbers; traced values (under jit) pass unchecked."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        if isinstance(value, bool | str | bytes):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: {name}={value!r} must be a number.") from None
    if not (math.isfinite(number) and low <= number < high):
        upper = "" if math.isinf(high) else f" and < {high}"
        raise ValueError(f"{fn}: {name}={value!r} must be finite, >= {low}{upper}.")


def path_names(path: Sequence[Any]) -> tuple[str | int, ...]:
    """A pytree key path as plain names and indices (``("blocks", 0, "layers", 1, "bias")``).

    Returns:
      A tuple of str and int.

    Example:
      >>> from jax.tree_util import DictKey, GetAttrKey
      >>> path_names((DictKey("fc"), DictKey("bias"), GetAttrKey("value")))
      ('fc', 'bias')
    """
    names: list[str | int] = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                value = getattr(entry, attr)
                break
        else:
            value = str(entry)
        if value == "value" and entry is path[-1]:
            continue  # nnx.Variable's payload
        names.append(value)
    return tuple(names)


def lr_multipliers(
    params: Any,
    *,
    bias_mult: float | int = 2.0,
    last_layer: Sequence[str | int] = (),
    last_layer_mult: float | int = 0.1,
) -> Any:
    """Per-parameter learning-rate multipliers: biases x ``bias_mult``, the last layer x0.1.

    The factors multiply (the last layer's bias gets ``bias_mult * last_layer_mult``, as in
    Caffe: 0.1 x 2 = 0.2 x ... of the base rate, i.e. 0.02 for NIN's base 0.1).

    Args:
      params: the parameter pytree (e.g. ``nnx.split(model, nnx.Param, ...)[1]``).
      bias_mult: factor of every parameter whose name is "bias".
      last_layer: path of the layer producing the logits (``NIN.last_layer_path()``).
      last_layer_mult: its factor.

    Returns:
      A pytree like params, of Python floats.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"conv": {"kernel": jnp.ones(2), "bias": jnp.ones(2)},
      ...           "fc": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}
      >>> lr_multipliers(params, last_layer=("fc",))
      {'conv': {'bias': 2.0, 'kernel': 1.0}, 'fc': {'bias': 0.2, 'kernel': 0.1}}
    """
    _check(bias_mult, "bias_mult", "lr_multipliers", low=0.0)
    _check(last_layer_mult, "last_layer_mult", "lr_multipliers", low=0.0)
    last = tuple(last_layer)

    def mult(path: Any, _: Any) -> float:
        names = path_names(path)
        m = bias_mult if names and names[-1] == "bias" else 1.0
        if last and names[: len(last)] == last:
            m *= last_layer_mult
        return m

    return jax.tree_util.tree_map_with_path(mult, params)


def _is_weight(params: Any) -> Any:
    """True for parameters that get weight decay: everything but biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: path_names(path)[-1:] != ("bias",), params
    )


def learning_rate_schedule(
    base_lr: float | int,
    *,
    schedule: str,
    steps_per_epoch: int,
    epochs: int,
    boundaries: Sequence[int] = (),
    decay: float | int = 0.1,
    warmup_epochs: float | int = 0,
) -> optax.Schedule:
    """The learning rate per step: "step" (divide by 1/decay at each boundary epoch), "cosine"
    or "constant", with an optional linear warm-up.

    Args:
      base_lr: the rate after warm-up.
      schedule: "step", "cosine" or "constant".
      steps_per_epoch: optimizer steps per epoch.
      epochs: the run's length (for "cosine").
      boundaries: epochs at which a "step" schedule multiplies the rate by ``decay`` (NIN:
        200 and 230 of 260).
      decay: the factor at each boundary.
      warmup_epochs: linear warm-up from 0 over this many epochs.

    Returns:
      An optax schedule (step -> learning rate).

    Example:
      >>> s = learning_rate_schedule(0.1, schedule="step", steps_per_epoch=10, epochs=3,
      ...                            boundaries=(1, 2))
      >>> [round(float(s(i)), 4) for i in (0, 9, 10, 20)]
      [0.1, 0.1, 0.01, 0.001]
    """
    fn = "learning_rate_schedule"
    _check(base_lr, "base_lr", fn, low=0.0)
    for name, value in (("steps_per_epoch", steps_per_epoch), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{fn}: {name}={value!r} must be an int >= 1.")
    _check(decay, "decay", fn, low=0.0)
    _check(warmup_epochs, "warmup_epochs", fn, low=0.0)
    for b in boundaries:
        _check(b, "boundaries", fn, low=0.0)
    if any(a >= b for a, b in itertools.pairwise(boundaries)):
        raise ValueError(f"{fn}: boundaries={tuple(boundaries)!r} must be increasing.")
    if schedule == "step":
        scales = {int(b * steps_per_epoch): decay for b in boundaries}
        main = optax.piecewise_constant_schedule(base_lr, scales)
    elif schedule == "cosine":
        main = optax.cosine_decay_schedule(base_lr, max(1, int(epochs * steps_per_epoch)))
    elif schedule == "constant":
        main = optax.constant_schedule(base_lr)
    else:
        raise ValueError(f"schedule must be 'step', 'cosine' or 'constant', got {schedule!r}.")
    warmup = int(warmup_epochs * steps_per_epoch)
    if not warmup:
        return main
    ramp = optax.linear_schedule(0.0, base_lr, warmup)
    return optax.join_schedules([ramp, lambda step: main(step + warmup)], [warmup])


def caffe_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float | int = 0.9,
    weight_decay: float | int = 0.0,
    multipliers: Any = None,
) -> optax.GradientTransformation:
    """Caffe's SGD: coupled L2 decay on weights, per-parameter rates, heavy-ball momentum.

    ``v <- momentum v + lr * mult * (g + weight_decay * w)`` (biases get no decay) and the
    update is ``-v``. Unlike ``optax.sgd``, the rate scales the gradient before the momentum
    buffer, so a step-down of the rate takes effect at once, as in Caffe and cuda-convnet.

    Args:
      learning_rate: a float or an optax schedule.
      momentum: the momentum coefficient.
      weight_decay: the L2 coefficient added to weights' gradients.
      multipliers: per-parameter factors (``lr_multipliers``), or None.

    Returns:
      An optax ``GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = caffe_sgd(0.1, momentum=0.9, weight_decay=0.5)
      >>> params = {"kernel": jnp.array(1.0)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"kernel": jnp.array(1.0)}, state, params)
      >>> float(updates["kernel"])  # -0.1 * (1 + 0.5 * 1)
      -0.15...
    """
    _check(momentum, "momentum", "caffe_sgd", low=0.0, high=1.0)
    _check(weight_decay, "weight_decay", "caffe_sgd", low=0.0)
    if not callable(learning_rate):  # a number; a schedule is checked where it is built
        _check(learning_rate, "learning_rate", "caffe_sgd", low=0.0)
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=_is_weight))
    if multipliers is not None:
        parts.append(
            optax.stateless(
                lambda updates, _: jax.tree.map(
                    lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers
                )
            )
        )
    parts.append(optax.scale_by_learning_rate(learning_rate))
    if momentum:
        parts.append(optax.trace(decay=momentum))
    return optax.chain(*parts)
