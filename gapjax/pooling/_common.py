"""The one private machinery behind every global pooling function.

Everything that is not the pooling formula itself lives here, once: resolving which axes are
spatial (``data_format`` or ``axis``), broadcasting masks, weights and per-channel parameters,
the float32 accumulation policy, the all-masked fill value, ``keepdims``, argument validation at
trace time, and the jit wrapper that makes every public function compiled and cached.
"""

import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DATA_FORMATS = ("channels_last", "channels_first")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which axes of ``x`` are pooled, resolved once per call at trace time.

    Attributes:
      shape: the shape of ``x``.
      axes: the pooled (spatial) axes, sorted, non-negative.
      channel_axis: the channel axis of ``x`` under ``data_format``; None when ``axis`` was given.
      mode: "data_format" or "axis", for error messages.
    """

    shape: tuple[int, ...]
    axes: tuple[int, ...]
    channel_axis: int | None
    mode: str

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of pooled positions per output element."""
        return math.prod(self.shape[a] for a in self.axes)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of the result with ``keepdims=False``."""
        return tuple(d for i, d in enumerate(self.shape) if i not in self.axes)

    @property
    def keep_shape(self) -> tuple[int, ...]:
        """The shape of the result with ``keepdims=True``."""
        return tuple(1 if i in self.axes else d for i, d in enumerate(self.shape))

    @property
    def site_shape(self) -> tuple[int, ...]:
        """``(batch, *spatial)``: the shape a mask or shared weight map describes."""
        if self.channel_axis is None:
            return self.shape
        return tuple(d for i, d in enumerate(self.shape) if i != self.channel_axis)

    @property
    def concat_axis(self) -> int:
        """Axis of the ``keepdims=True`` result along which per-channel results are concatenated."""
        if self.channel_axis is not None:
            return self.channel_axis
        kept = [i for i in range(self.ndim) if i not in self.axes]
        return kept[-1]


def resolve_layout(
    shape: Sequence[int], *, axis: int | Sequence[int] | None, data_format: str, fn: str
) -> Layout:
    """Resolves the pooled axes of an array of ``shape``; raises ValueError naming the argument."""
    shape = tuple(int(d) for d in shape)
    ndim = len(shape)
    if axis is None:
        if data_format not in DATA_FORMATS:
            raise ValueError(
                f"{fn}: data_format must be one of {DATA_FORMATS}, got {data_format!r}."
            )
        if ndim not in (3, 4, 5):
            expected = (
                "(batch, *spatial, channels)"
                if data_format == "channels_last"
                else "(batch, channels, *spatial)"
            )
            raise ValueError(
                f"{fn}: x must have rank 3, 4 or 5, {expected} with 1-3 spatial axes for "
                f"data_format={data_format!r}; got x of shape {shape} (rank {ndim}). "
                "Pass axis=... to pool over explicit axes of any layout."
            )
        if data_format == "channels_last":
            layout = Layout(shape, tuple(range(1, ndim - 1)), ndim - 1, "data_format")
        else:
            layout = Layout(shape, tuple(range(2, ndim)), 1, "data_format")
    else:
        if isinstance(axis, numbers.Integral):
            axes = (axis,)
        elif isinstance(axis, tuple):
            axes = axis
        else:
            raise SettingTypeError(
                f"{fn}: axis must be an int or a tuple of ints, got {axis!r} "
                f"({type(axis).__name__})."
            )
        if not axes:
            raise ValueError(f"{fn}: axis must name at least one axis, got {axis!r}.")
        normalized = []
        for a in axes:
            if not isinstance(a, numbers.Integral) or isinstance(a, bool):
                raise SettingTypeError(
                    f"{fn}: axis must be an int or a tuple of ints, got {axis!r}."
                )
            if not -ndim <= a < ndim:
                raise ValueError(
                    f"{fn}: axis {a} is out of range for x of shape {shape} (rank {ndim})."
                )
            normalized.append(int(a) % ndim)
        if len(set(normalized)) != len(normalized):
            raise ValueError(f"{fn}: axis contains repeated axes: {axis!r} for x of shape {shape}.")
        layout = Layout(shape, tuple(sorted(normalized)), None, "axis")
    if layout.size == 0:
        raise ValueError(
            f"{fn}: x of shape {shape} has no positions to pool over axes {layout.axes}."
        )
    return layout


def as_array(x: Any, fn: str) -> jax.Array:
    """Converts ``x`` to an array and rejects dtypes no pooling is defined for."""
    x = jnp.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_):
        raise ValueError(f"{fn}: x must be a real array, got dtype {x.dtype}.")
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"{fn}: x must be real, got dtype {x.dtype}.")
    return x


def float_dtype(dtype: Any) -> Any:
    """The dtype a mean-like pool returns: the input's float dtype, else JAX's default float."""
    if jnp.issubdtype(dtype, jnp.floating):
        return dtype
    return jnp.result_type(float)


def accum_dtype(dtype: Any) -> Any:
    """The dtype sums are accumulated in: float32 for float16/bfloat16 (and for integers)."""
    out = float_dtype(dtype)
    if jnp.finfo(out).bits < 32:
        return jnp.float32
    return out


def _broadcast_to_x(value: jax.Array, layout: Layout, *, arg: str, fn: str, what: str) -> jax.Array:
    """Broadcasts a mask or weight map to a shape that broadcasts against x.

    With ``data_format``, an array of rank < x.ndim describes ``(batch, *spatial)`` (broadcast
    NumPy-style, right-aligned) and gets a size-1 channel axis; an array of rank x.ndim is
    per-channel and broadcasts against x itself. With ``axis``, it broadcasts against x.
    """
    shape = tuple(value.shape)
    if layout.channel_axis is not None and value.ndim < layout.ndim:
        target = layout.site_shape
        try:
            ok = np.broadcast_shapes(shape, target) == target
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{fn}: {arg} of shape {shape} does not broadcast to (batch, *spatial) = "
                f"{target} (nor, at rank {layout.ndim}, to x's shape {layout.shape}); {what}."
            )
        value = value.reshape((1,) * (len(target) - value.ndim) + shape)
        return jnp.expand_dims(value, layout.channel_axis)
    try:
        ok = value.ndim <= layout.ndim and np.broadcast_shapes(shape, layout.shape) == layout.shape
    except ValueError:
        ok = False
    if not ok:
        hint = (
            f"with axis=..., {arg} broadcasts against x itself"
            if layout.channel_axis is None
            else f"or (batch, *spatial) = {layout.site_shape}"
        )
        raise ValueError(
            f"{fn}: {arg} of shape {shape} does not broadcast to x's shape {layout.shape} "
            f"({hint}); {what}."
        )
    return value


def prepare_mask(mask: Any, layout: Layout, fn: str) -> jax.Array | None:
    """Returns the mask as a bool array that broadcasts against x, or None."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.number)):
        raise ValueError(f"{fn}: mask must be boolean or 0/1 numbers, got dtype {mask.dtype}.")
    mask = _broadcast_to_x(
        mask, layout, arg="mask", fn=fn, what="True (or 1) marks the positions to pool"
    )
    # Concrete numeric masks were checked to hold only 0 and 1 (check_mask); a traced one is
    # read as ``mask != 0``.
    return mask if mask.dtype == jnp.bool_ else mask != 0


def prepare_weights(weights: Any, layout: Layout, *, arg: str, fn: str, dtype: Any) -> jax.Array:
    """Returns a weight (or score) map named ``arg`` as ``dtype``, broadcasting against x."""
    weights = jnp.asarray(weights)
    if not (jnp.issubdtype(weights.dtype, jnp.number) or weights.dtype == jnp.bool_):
        raise ValueError(f"{fn}: {arg} must be real numbers, got dtype {weights.dtype}.")
    if jnp.issubdtype(weights.dtype, jnp.complexfloating):
        raise ValueError(f"{fn}: {arg} must be real, got dtype {weights.dtype}.")
    weights = _broadcast_to_x(
        weights,
        layout,
        arg=arg,
        fn=fn,
        what="give one weight per position, shared over channels or per channel",
    )
    return weights.astype(dtype)


def prepare_param(value: Any, layout: Layout, *, arg: str, fn: str, dtype: Any) -> jax.Array:
    """Broadcasts a scalar or per-output parameter (e.g. per channel) against x.

    ``value`` must broadcast to the pooled output's shape (``keepdims=False``), e.g.
    ``(channels,)``; it is returned with size-1 pooled axes so that it broadcasts against x.
    """
    value = jnp.asarray(value)
    out_shape = layout.out_shape
    try:
        ok = value.ndim <= len(out_shape) and (
            np.broadcast_shapes(value.shape, out_shape) == out_shape
        )
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{fn}: {arg} of shape {tuple(value.shape)} must be a scalar or broadcast to the "
            f"pooled output's shape {out_shape} (e.g. one value per channel)."
        )
    value = value.reshape((1,) * (len(out_shape) - value.ndim) + value.shape)
    return jnp.expand_dims(value, layout.axes).astype(dtype)


def broadcast_sum(v: jax.Array, layout: Layout, dtype: Any) -> jax.Array:
    """Sum of ``v`` over the pooled axes as if broadcast to x's shape (e.g. a mask's count).

    ``v`` broadcasts against x; pooled axes where it has size 1 count once per position. The
    result broadcasts against the pooled output (``out_shape``).
    """
    axes = tuple(a for a in layout.axes if v.shape[a] != 1)
    total = jnp.sum(v, axis=axes, keepdims=True, dtype=dtype)
    repeats = math.prod(layout.shape[a] for a in layout.axes if v.shape[a] == 1)
    if repeats != 1:
        total = total * repeats
    return jnp.squeeze(total, axis=layout.axes)


def any_valid(mask: jax.Array | None, layout: Layout) -> jax.Array | None:
    """Whether each output element has at least one unmasked position (None without a mask)."""
    if mask is None:
        return None
    return jnp.squeeze(jnp.any(mask, axis=layout.axes, keepdims=True), axis=layout.axes)


def lowest(dtype: Any) -> Any:
    """The identity of max: -inf for floats, the smallest integer, False for bool."""
    if jnp.issubdtype(dtype, jnp.floating):
        return -jnp.inf
    if dtype == jnp.bool_:
        return False
    return jnp.iinfo(dtype).min


def highest(dtype: Any) -> Any:
    """The identity of min: +inf for floats, the largest integer, True for bool."""
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.inf
    if dtype == jnp.bool_:
        return True
    return jnp.iinfo(dtype).max


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den != 0, else 0, with finite gradients everywhere (double where)."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def safe_power(b: jax.Array, p: Any) -> jax.Array:
    """``b ** p`` with a finite gradient at ``b = 0`` for ``p < 1`` (taken as 0 there).

    The derivative ``p b^(p-1)`` is +inf at 0 for p < 1 and would turn a gradient NaN (inf * 0)
    even where the result does not depend on b (an all-zero window); for p >= 1 it is finite
    and kept.
    """
    flat = (b == 0) & (p < 1)
    return jnp.where(flat, 0, jnp.where(flat, 1, b) ** p)


def safe_root(s: jax.Array, p: Any) -> jax.Array:
    """s ** (1/p) for s > 0, else 0, with a finite gradient at s = 0."""
    positive = s > 0
    return jnp.where(positive, jnp.where(positive, s, 1) ** (1 / p), jnp.where(s == 0, 0, jnp.nan))


def finish(
    out: jax.Array,
    layout: Layout,
    *,
    valid: jax.Array | None,
    fill_value: Any,
    dtype: Any,
    keepdims: bool,
) -> jax.Array:
    """Fills all-masked rows, casts to the result dtype and applies keepdims."""
    if valid is not None:
        out = jnp.where(valid, out, jnp.asarray(fill_value, out.dtype))
    out = out.astype(dtype)
    if keepdims:
        out = jnp.expand_dims(out, layout.axes)
    return out


def propagate_nan(out: jax.Array, x: jax.Array, mask: jax.Array | None, layout: Layout):
    """Makes out NaN wherever an unmasked input position is NaN (for order-based reducers)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return out
    bad = jnp.isnan(x) if mask is None else jnp.isnan(x) & mask
    bad = jnp.any(bad, axis=layout.axes)
    return jnp.where(bad, jnp.nan, out)


class SettingTypeError(TypeError, ValueError):
    """A setting of the wrong type: a string for a bool switch, a float or an array for a size.

    A TypeError, and also a ValueError so that code catching bad arguments as ValueError (the
    rest of the checks) catches these too.
    """


def is_concrete(value: Any) -> bool:
    """True for values whose contents are known at trace time (not JAX tracers)."""
    return not isinstance(value, jax.core.Tracer)


def _values(fn: str, arg: str, value: Any) -> np.ndarray | None:
    """A concrete numeric value as float64 (None for None or a tracer); rejects non-numbers."""
    if value is None or not is_concrete(value):
        return None
    try:
        v = np.asarray(value)
    except (TypeError, ValueError):
        v = None
    if v is None or v.dtype == object or not (v.dtype == bool or np.issubdtype(v.dtype, np.number)):
        raise SettingTypeError(f"{fn}: {arg} must be a real number (or array), got {value!r}.")
    if np.issubdtype(v.dtype, np.complexfloating):
        raise SettingTypeError(f"{fn}: {arg} must be real, got {value!r}.")
    return v.astype(np.float64)


def check_positive(fn: str, arg: str, value: Any) -> None:
    """Raises ValueError unless a concrete value is finite and > 0 (NaN and inf fail).

    Traced values (a learned parameter under jit) cannot be checked.
    """
    v = _values(fn, arg, value)
    if v is not None and not np.all(np.isfinite(v) & (v > 0)):
        raise ValueError(f"{fn}: {arg} must be > 0 and finite, got {value!r}.")


def check_unit_interval(fn: str, arg: str, value: Any) -> None:
    """Raises ValueError if a concrete value lies outside [0, 1] (NaN included)."""
    v = _values(fn, arg, value)
    if v is not None and not np.all((v >= 0) & (v <= 1)):
        raise ValueError(f"{fn}: {arg} must lie in [0, 1], got {value!r}.")


def check_finite(fn: str, arg: str, value: Any) -> None:
    """Raises ValueError if a concrete value is NaN or infinite."""
    v = _values(fn, arg, value)
    if v is not None and not np.all(np.isfinite(v)):
        raise ValueError(f"{fn}: {arg} must be finite, got {value!r}.")


def check_bool(fn: str, arg: str, value: Any) -> None:
    """Raises SettingTypeError unless value is a bool (a static switch such as ``train``).

    NumPy bools are accepted (the wrapper turns them into Python bools first); strings such as
    'no', numbers and arrays are not: ``bool('no')`` is True.
    """
    if not isinstance(value, bool | np.bool_):
        raise SettingTypeError(f"{fn}: {arg} must be a bool (True or False), got {value!r}.")


def check_optional_bool(fn: str, arg: str, value: Any) -> None:
    """``check_bool`` that also accepts None (the convention's default)."""
    if value is not None:
        check_bool(fn, arg, value)


def check_mask(fn: str, arg: str, value: Any) -> None:
    """Raises ValueError if a concrete numeric mask holds values other than 0 and 1.

    A mask of 0.5, 2 or NaN would otherwise be read as True. Boolean masks need no check; a
    traced mask (inside the caller's jit) cannot be checked and is read as ``mask != 0``.
    """
    if value is None or not is_concrete(value):
        return
    dtype = getattr(value, "dtype", None)
    if dtype is not None and dtype == np.bool_:
        return
    try:
        v = np.asarray(value)
    except (TypeError, ValueError):
        return  # prepare_mask names the dtype
    if v.dtype == bool or not np.issubdtype(v.dtype, np.number):
        return
    bad = ~((v == 0) | (v == 1))
    if bad.any():
        raise ValueError(
            f"{fn}: {arg} must hold only booleans or 0/1, got values such as "
            f"{sorted({float(u) for u in v[bad].ravel()[:3]})} (shape {v.shape})."
        )


def static_value(fn: str, arg: str, value: Any) -> Any:
    """A static setting made hashable: lists as tuples, NumPy scalars as Python scalars.

    Arrays (NumPy or JAX) are refused with a message naming the function and the argument
    (jit's own "Non-hashable static arguments" names neither).
    """
    if isinstance(value, list | tuple):
        return tuple(static_value(fn, arg, v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | jax.Array):
        raise SettingTypeError(
            f"{fn}: {arg} is a static setting (a Python int, float, bool, str or a tuple of "
            f"them), got an array of shape {tuple(value.shape)} and dtype {value.dtype}."
        )
    try:
        hash(value)
    except TypeError:
        raise SettingTypeError(
            f"{fn}: {arg} is a static setting (a Python int, float, bool, str or a tuple of "
            f"them), got {type(value).__name__} {value!r}."
        ) from None
    return value


def fill_doc(fn: Callable, **parts: str) -> Callable:
    """Replaces ``{name}`` placeholders in fn's docstring (shared argument lists, Returns)."""
    for name, text in parts.items():
        fn.__doc__ = fn.__doc__.replace("{" + name + "}", text)
    return fn


def pooling_function(
    *,
    static: tuple[str, ...],
    checks: Mapping[str, Callable[[str, str, Any], None]] = {},
    validate: Callable[[str, dict[str, Any]], None] | None = None,
) -> Callable:
    """Makes ``fn`` a compiled, cached public pooling function.

    The result calls ``jax.jit(fn, static_argnames=static)``: eager calls compile once per shape
    and static configuration, and calls inside a user's transformation simply inline it. Before
    that, ``checks`` validate concrete hyperparameter values (e.g. ``p > 0``) so that a bad value
    raises ValueError even though jit would turn it into a tracer; traced values pass unchecked.
    Static arguments given as lists (``axis=[1, 2]``, ``kernel_size=[3, 3]``, nested padding
    pairs) are turned into tuples and NumPy scalars into Python ones, so that they can be hashed;
    arrays are refused (``static_value``). Every function checks ``mask`` (only 0/1 when
    concrete). ``validate(name, arguments)`` checks the static settings that need no data (kernel
    sizes >= 1...), so that a module built with them fails at once.
    """
    checks = {"mask": check_mask, **checks}

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        jitted = jax.jit(fn, static_argnames=static)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{fn.__name__}: {e}") from None
            _check(bound.arguments)
            return jitted(*bound.args, **bound.kwargs)

        def _check(arguments: dict[str, Any]) -> None:
            for arg in static:
                if arg in arguments:
                    arguments[arg] = static_value(fn.__name__, arg, arguments[arg])
            for arg, check in checks.items():
                if arg in arguments:
                    check(fn.__name__, arg, arguments[arg])
            if validate is not None:
                validate(fn.__name__, arguments)

        def settings(**kwargs: Any) -> dict[str, Any]:
            """Validates keyword settings without data (what a Flax module stores).

            Unknown names raise TypeError; static lists become tuples; concrete values get
            the same checks as a call, so a module fails when it is built, not when first used.
            """
            unknown = sorted(set(kwargs) - set(signature.parameters))
            if unknown:
                raise TypeError(
                    f"{fn.__name__}: unknown argument(s) {unknown}; "
                    f"it takes {list(signature.parameters)}."
                )
            out = dict(kwargs)
            _check(out)
            return out

        wrapper.jitted = jitted  # the compiled function, e.g. for inspecting its cache
        wrapper.settings = settings
        return wrapper

    return decorate
