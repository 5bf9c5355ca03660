"""Native CPU kernels (private): ``_native.cc``, compiled on first use and called through XLA's FFI.

XLA:CPU cannot compute a maximum and its position in one pass over the input (it splits every
two-output loop into two loops that each read x), and its reductions over non-contiguous rows run
well below memory bandwidth. The kernels in ``_native.cc`` read the input once, vectorized along
the contiguous axis, on XLA's own intra-op thread pool, and are called as XLA custom calls
(``jax.ffi.ffi_call``), so they compose with ``jit``, ``vmap`` and the custom derivative rules of
``_kernels``.

Kernels that write an output of 8 MB or more first advise its pages as transparent huge pages
(``madvise``, Linux): XLA's large output buffers are fresh memory, and faulting them in 4 KB
pages cost more than the kernels themselves.

The source is compiled the first time a CPU computation needs it, with the system C++ compiler
(``$CXX``, else ``c++``; ``-O3 -march=native``) against the FFI headers that jaxlib ships, and the
library is cached under ``$GAPJAX_CACHE_DIR`` (default ``~/.cache/gapjax``), keyed by the
source, jaxlib's version, the compiler, its flags (``$GAPJAX_NATIVE_CXXFLAGS`` adds some, e.g.
``-march=x86-64-v3``) and the CPU's features. Without a compiler, or with
``GAPJAX_NATIVE=0`` in the environment, gapjax warns once (not for ``GAPJAX_NATIVE=0``) and uses
its pure-XLA formulations, which give identical results. Only the default backend ``cpu`` uses
the kernels; GPU and TPU programs never see them.
"""

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "WindowMap",
    "available",
    "disabled",
    "extreme",
    "linear_available",
    "reduce_sum",
    "window_map",
    "window_select",
]

_SOURCE = Path(__file__).with_name("_native.cc")
_TARGETS = {
    "gapjax_extreme": "GapjaxExtreme",
    "gapjax_extreme_index": "GapjaxExtremeIndex",
    "gapjax_sum": "GapjaxSum",
    "gapjax_window_select": "GapjaxWindowSelect",
    "gapjax_window_gather": "GapjaxWindowGather",
    "gapjax_window_gather_win": "GapjaxWindowGatherWin",
    "gapjax_window_scatter": "GapjaxWindowScatter",
    "gapjax_window_scatter_win": "GapjaxWindowScatterWin",
}
# float dtypes the kernels take (others use the XLA formulations).
DTYPES = (jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16)
# float dtypes the sum kernel takes (accumulating in float32).
SUM_DTYPES = (jnp.float32, jnp.bfloat16)

_lock = threading.Lock()
_state: dict = {"loaded": None, "off": False}


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(cache: Path) -> Path:
    """Compile ``_native.cc`` into ``cache`` (if not there yet) and return the library's path."""
    import jaxlib

    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"
    flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]
    if sys.platform == "darwin":
        flags += ["-undefined", "dynamic_lookup"]
    flags += shlex.split(os.environ.get("GAPJAX_NATIVE_CXXFLAGS", ""))  # e.g. -march=x86-64-v3
    include = jax.ffi.include_dir()
    key = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), jaxlib.__version__, cxx, " ".join(flags), _cpu_features()):
        key.update(part if isinstance(part, bytes) else part.encode())
    lib = cache / f"gapjax_native_{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    # Compile to a private name, then rename: concurrent processes (pytest -n) never load a
    # half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        cmd = [cxx, *flags, f"-I{include}", str(_SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _cache_dirs() -> list[Path]:
    """Where the library may be cached: ``$GAPJAX_CACHE_DIR`` or ``~/.cache/gapjax``, then a
    per-user folder in the temporary directory (a read-only home)."""
    first = os.environ.get("GAPJAX_CACHE_DIR") or Path.home() / ".cache" / "gapjax"
    user = os.environ.get("USER") or str(os.getuid() if hasattr(os, "getuid") else "user")
    return [Path(first).expanduser(), Path(tempfile.gettempdir()) / f"gapjax-{user}"]


def _load() -> bool:
    try:
        for n, cache in enumerate(_cache_dirs()):
            try:
                path = _build(cache)
                break
            except OSError:  # not writable: try the next place
                if n == len(_cache_dirs()) - 1:
                    raise
        lib = ctypes.cdll.LoadLibrary(str(path))
        for name, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), "cpu")
    except Exception as err:  # no compiler, no headers, a read-only cache: fall back, once.
        warnings.warn(
            f"gapjax: native CPU kernels unavailable ({err}); using the XLA formulations "
            "(same results, slower max and average pooling). Set GAPJAX_NATIVE=0 to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def available() -> bool:
    """Whether the native kernels may be used: the default backend is CPU, ``GAPJAX_NATIVE`` is
    not ``0`` and the library compiled and loaded (tried once per process)."""
    if _state["off"] or os.environ.get("GAPJAX_NATIVE", "1") == "0":
        return False
    if jax.default_backend() != "cpu":
        return False
    with _lock:
        if _state["loaded"] is None:
            _state["loaded"] = _load()
    return _state["loaded"]


@contextlib.contextmanager
def disabled():
    """Trace with the XLA formulations instead of the native kernels (tests, comparisons).

    Clears JAX's caches on entry and exit, so that functions traced before are traced again.
    """
    jax.clear_caches()
    _state["off"] = True
    try:
        yield
    finally:
        _state["off"] = False
        jax.clear_caches()


def supports(dtype) -> bool:
    """Whether the extreme kernels take this dtype."""
    return any(jnp.dtype(dtype) == jnp.dtype(d) for d in DTYPES)


def sums(dtype) -> bool:
    """Whether the sum kernel takes this dtype."""
    return any(jnp.dtype(dtype) == jnp.dtype(d) for d in SUM_DTYPES)


def extreme(x3: jax.Array, *, largest: bool, index: bool):
    """Max (``largest``) or min over axis -2 of ``x3`` (..., R, Q), NaN-propagating, and with
    ``index`` the int32 position of the first extreme (or first NaN) along that axis."""
    out = jax.ShapeDtypeStruct(x3.shape[:-2] + x3.shape[-1:], x3.dtype)
    if not index:
        call = jax.ffi.ffi_call("gapjax_extreme", out, vmap_method="broadcast_all")
        return call(x3, largest=bool(largest))
    pos = jax.ShapeDtypeStruct(out.shape, np.int32)
    call = jax.ffi.ffi_call("gapjax_extreme_index", (out, pos), vmap_method="broadcast_all")
    return tuple(call(x3, largest=bool(largest)))


def reduce_sum(x3: jax.Array, *, divisor: float = 1.0) -> jax.Array:
    """Sum over axis -2 of ``x3`` (..., R, Q) float32 or bfloat16, accumulated and returned in
    float32, divided by ``divisor`` (the mean: the count; 1 for the sum). Columns (Q > 1): rows
    are added in order in groups of 16, and the groups in order (the rounding error grows with
    16 + R / 16, not R). Contiguous rows (Q == 1): 64 interleaved partial sums, added pairwise.
    gapjax's pooling functions call it for Q > 1 only (XLA's reduce is as fast on contiguous
    rows)."""
    out = jax.ShapeDtypeStruct(x3.shape[:-2] + x3.shape[-1:], np.float32)
    call = jax.ffi.ffi_call("gapjax_sum", out, vmap_method="broadcast_all")
    return call(x3, divisor=np.float32(divisor))


def window_select(
    x3: jax.Array,
    geometry: np.ndarray,
    outs: tuple[int, ...],
    *,
    largest: bool,
    floor: Any,
    win_dtype: Any,
):
    """Extreme of every window of x3 (P, S, Q) float32, and its winning tap.

    ``geometry`` (int64): k, the input lengths, output lengths and taps of the k pooled axes
    (S = their product, row-major), then per axis the (outputs, taps) table of the input
    position each tap reads (-1: padding). Returns (best, win) shaped (P, prod(outs), Q): the
    first tap equal to the extreme in row-major tap order, or the last NaN; -1 (and the
    identity) for a window with no tap inside x; with ``floor``, extremes beyond it become it,
    with winner -1 (Caffe's -FLT_MAX start).
    """
    shape = (*x3.shape[:-2], math.prod(outs), x3.shape[-1])
    call = jax.ffi.ffi_call(
        "gapjax_window_select",
        (jax.ShapeDtypeStruct(shape, x3.dtype), jax.ShapeDtypeStruct(shape, win_dtype)),
        vmap_method="broadcast_all",
    )
    best, win = call(
        x3,
        geometry=np.ascontiguousarray(geometry, np.int64),
        largest=bool(largest),
        has_floor=floor is not None,
        floor=np.float32(0.0 if floor is None else floor),
    )
    return best, win


# --------------------------------------------------------------------------------------------
# Window sums and their transposes as JAX primitives.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class WindowMap:
    """The windows of one reduction stage, as the linear maps between its input and output.

    ``gather``: (..., S, Q) -> (..., O, Q), every window's sum (only its winning tap, given the
    winners), times ``scale`` per output; ``scatter``: its transpose, (..., O, Q) -> (..., S, Q).
    ``geometry`` is ``window_select``'s; ``xla_gather`` and ``xla_scatter`` compute the same
    maps with XLA ops (platforms other than CPU). Hashed by identity (a primitive parameter).
    """

    geometry: np.ndarray
    size: int
    outs: int
    scale: np.ndarray | None
    xla_gather: Callable
    xla_scatter: Callable


def _ffi_linear(v: jax.Array, win: tuple, m: WindowMap, *, scatter: bool) -> jax.Array:
    rows = m.size if scatter else m.outs
    name = "gapjax_window_" + ("scatter" if scatter else "gather") + ("_win" if win else "")
    out = jax.ShapeDtypeStruct((*v.shape[:-2], rows, v.shape[-1]), v.dtype)
    call = jax.ffi.ffi_call(name, out, vmap_method="broadcast_all")
    geometry = np.ascontiguousarray(m.geometry, np.int64)
    if win:
        return call(v, *win, geometry=geometry)
    scale = np.zeros(0, np.float32) if m.scale is None else m.scale
    return call(v, geometry=geometry, scale=np.ascontiguousarray(scale, np.float32))


def _xla_linear(v: jax.Array, win: tuple, m: WindowMap, *, scatter: bool) -> jax.Array:
    return (m.xla_scatter if scatter else m.xla_gather)(v, win[0] if win else None)


def _define_primitives():
    """The gather and scatter primitives: linear in their first operand (the winners, if any,
    are a constant second operand), each the other's transpose, batched by folding the batch
    into the leading axes, lowered to the native kernels on CPU and to XLA ops elsewhere."""
    from jax.extend.core import Primitive
    from jax.interpreters import ad, batching, mlir

    gather_p, scatter_p = Primitive("gapjax_window_gather"), Primitive("gapjax_window_scatter")
    pairs = ((gather_p, scatter_p, False), (scatter_p, gather_p, True))
    for prim, other, scatter in pairs:

        def abstract(v, *win, wmap, scatter=scatter):
            rows = wmap.size if scatter else wmap.outs
            return v.update(shape=(*v.shape[:-2], rows, v.shape[-1]))

        def jvp(primals, tangents, *, wmap, prim=prim):
            out = prim.bind(*primals, wmap=wmap)
            return out, prim.bind(ad.instantiate_zeros(tangents[0]), *primals[1:], wmap=wmap)

        def transpose(ct, v, *win, wmap, other=other):
            if type(ct) is ad.Zero:
                return (ad.Zero(v.aval), *([None] * len(win)))
            return (other.bind(ct, *win, wmap=wmap), *([None] * len(win)))

        def batch(args, dims, *, wmap, prim=prim):
            size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
            moved = [
                jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
                for a, d in zip(args, dims, strict=True)
            ]
            return prim.bind(*moved, wmap=wmap), 0

        def impl(*args, wmap, prim=prim):
            return _jit_bind(prim, wmap)(*args)

        prim.def_impl(impl)
        prim.def_abstract_eval(abstract)
        ad.primitive_jvps[prim] = jvp
        ad.primitive_transposes[prim] = transpose
        batching.primitive_batchers[prim] = batch
        for lower, target in ((_xla_linear, None), (_ffi_linear, "cpu")):
            rule = functools.partial(lower, scatter=scatter)
            mlir.register_lowering(
                prim,
                mlir.lower_fun(lambda v, *win, wmap, rule=rule: rule(v, win, wmap), False),
                platform=target,
            )
    return gather_p, scatter_p


@functools.lru_cache(maxsize=256)
def _jit_bind(prim, m: WindowMap):
    return jax.jit(lambda *args: prim.bind(*args, wmap=m))


try:
    _PRIMITIVES = _define_primitives()
except (ImportError, AttributeError, TypeError):  # a JAX without these internals
    _PRIMITIVES = None


def window_map(
    v: jax.Array, win: jax.Array | None, m: WindowMap, *, scatter: bool = False
) -> jax.Array:
    """``m``'s gather (or with ``scatter``, its transpose) of v (..., A, Q) float32, restricted
    to each window's winning tap where ``win`` (int8/int32, shaped like the gather's output) is
    given. Differentiable (the maps are linear in v), batched by vmap, every order."""
    gather_p, scatter_p = _PRIMITIVES
    prim = scatter_p if scatter else gather_p
    return prim.bind(v, *(() if win is None else (win,)), wmap=m)


def linear_available() -> bool:
    """Whether ``window_map`` may be used (``available()``, and this JAX has the primitive
    machinery it needs)."""
    return _PRIMITIVES is not None and available()
