"""Private checks of the readers' and transforms' settings: ValueError naming the function, the
argument and the value. ``True`` is never an int here, and numbers are finite."""

import math
import numbers
from typing import Any

import jax


def is_int(value: Any, minimum: int = 0) -> bool:
    """A Python or NumPy integer (not a bool) >= ``minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def check_int(value: Any, name: str, fn: str, *, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (Python or NumPy integers; not bools)."""
    if not is_int(value, minimum):
        raise ValueError(f"{fn}: {name}={value!r} must be an int >= {minimum}.")
    return int(value)


def check_real(
    value: Any,
    name: str,
    fn: str,
    *,
    minimum: float = -math.inf,
    maximum: float = math.inf,
    positive: bool = False,
) -> Any:
    """A finite real number in [minimum, maximum] (> 0 with ``positive``); a traced value
    (under jit) passes unchecked."""
    if isinstance(value, jax.core.Tracer):
        return value
    try:
        if isinstance(value, bool | str | bytes):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and minimum <= v <= maximum and (v > 0 or not positive)):
        where = "> 0" if positive else f"in [{minimum}, {maximum}]"
        if not positive and math.isinf(maximum):
            where = f">= {minimum}"
        raise ValueError(f"{fn}: {name}={value!r} must be a finite number {where}.")
    return value
