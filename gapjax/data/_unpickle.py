"""A pickle reader that can build only what the CIFAR python files contain.

The CIFAR "python version" batches are Python-2 pickles (protocol 2) of a dict of byte strings,
lists of ints and NumPy uint8 arrays. Their only globals are ``numpy.core.multiarray._reconstruct``,
``numpy.ndarray`` and ``numpy.dtype``; a pickle written by Python 3 with protocol 2 also calls
``_codecs.encode(text, "latin1")`` for every ``bytes`` object. Those are the only names this
unpickler resolves: anything else (``os.system``, ``builtins.eval``, any class) raises an error
naming the file before it is looked up, so a tampered file cannot run code.
"""

import codecs
import io
import pickle
from typing import Any

import numpy as np

# ndarray.__reduce__ names NumPy's array reconstructor; taking it from there avoids importing
# numpy.core (deprecated in NumPy 2) or numpy._core (private).
_reconstruct = np.ndarray((0,), np.uint8).__reduce__()[0]


class _Forbidden(pickle.UnpicklingError):
    """The pickle asked for a global outside the allowed list."""


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to what pickle protocol 2 emits for bytes: latin-1 of a str."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise _Forbidden(
            f"_codecs.encode is only allowed on a str with latin1, got {type(text).__name__} "
            f"with {encoding!r}"
        )
    return text.encode("latin1", errors)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Forbidden(
                f"the pickle refers to {module}.{name}, which a CIFAR file never does "
                f"(allowed: {sorted(f'{m}.{n}' for m, n in _ALLOWED)})"
            ) from None


def load_restricted_pickle(data: bytes, *, source: str) -> Any:
    """Unpickles ``data`` (keys and strings as bytes) allowing only the CIFAR globals.

    Args:
      data: the pickle's bytes.
      source: the file name (or ``archive:member``) for error messages.

    Returns:
      The unpickled object (a dict for CIFAR files).

    Raises:
      ValueError: naming ``source``, for a disallowed global or a corrupt/truncated pickle.
    """
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Forbidden as e:
        raise ValueError(f"{source}: refusing to unpickle: {e}.") from None
    except Exception as e:  # a truncated or corrupt stream fails in many ways
        raise ValueError(
            f"{source}: not a readable pickle (corrupt or truncated): {type(e).__name__}: {e}."
        ) from None
    return obj
