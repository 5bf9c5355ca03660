"""Compile time against run time of the formulations of a small padded window on CPU.

    python benchmarks/window_formulations.py [--rounds N] [--json PATH]

The evidence behind the tap engine's regions (``gapjax.pooling._windows``, ``Stage.assemble``):
a small window that reads padding can be written several ways in pure JAX, and on XLA:CPU none
found so far both compiles as fast as flax's ``reduce_window`` and runs as fast as the engine.
For max 3x3/1 pad 1, NIN's two max 3x3/2 pools (Caffe: one cell of padding at the end) and
average 3x3/1 pad 1, forward only, each candidate is timed twice:

  compile  ``jax.jit(f).lower(x).compile()`` on 4x32x32x16 (caches cleared before each; median)
  run      ms per call on 128x32x32x96 float32 (NIN's second pool: 128x16x16x192):
           interleaved rounds, each a block of 3 calls (median over the rounds)

Candidates (all give the same values; checked before timing):

  engine        ``gapjax.max_pool`` / ``avg_pool`` as they are (max with stride 1: taps read
                at clamped positions in one loop; strided max and average: regions)
  clamped       (max) the clamped reads, also for strided windows
  regions       (max) the tap engine's interior and border regions, each a loop of plain
                slices (``_windows._clamped`` switched off)
  flax          flax's ``max_pool`` / ``avg_pool`` (``lax.reduce_window``)
  tap_pads      one loop over the whole output, every tap a slice padded on its own
  padded_copy   the input padded once (XLA writes the copy), then plain slices
  separable     3 taps along the width, then 3 along the height (two loops, 1-D pads)
  clamped_mask  (average) taps at clamped positions, set to 0 outside the window by a select
                with a constant mask
  clamped_iota  (average) the same, the mask computed from iotas
"""

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen
from jax import lax
from pooling import describe, machine, save_result, versions

import gapjax
from gapjax.pooling import _windows

jax.config.update("jax_enable_compilation_cache", False)

SMALL, LARGE = (4, 32, 32, 16), (128, 32, 32, 96)


def _tap(x, axis_offsets, pads, stride):
    """x read at ``i * stride + offset`` along axes 1 and 2, padding (-inf) outside."""
    for axis, off in axis_offsets:
        n = x.shape[axis]
        lo, hi = pads[axis]
        out = (n + lo + hi - 3) // stride + 1
        pos = np.arange(out) * stride + off - lo
        ok = (pos >= 0) & (pos < n)
        first, last = int(pos[ok][0]), int(pos[ok][-1])
        x = lax.slice_in_dim(x, first, last + 1, stride, axis)
        before, after = int(np.argmax(ok)), int(out - 1 - np.flatnonzero(ok)[-1])
        cfg = [(0, 0, 0)] * x.ndim
        cfg[axis] = (before, after, 0)
        x = lax.pad(x, jnp.asarray(-jnp.inf, x.dtype), cfg)
    return x


def tap_pads(stride, pads):
    def f(x):
        out = None
        for a in range(3):
            for b in range(3):
                t = _tap(x, [(1, a), (2, b)], pads, stride)
                out = t if out is None else jnp.maximum(out, t)
        return out

    return f


def padded_copy(stride, pads):
    def f(x):
        cfg = [(0, 0, 0), (*pads[1], 0), (*pads[2], 0), (0, 0, 0)]
        xp = lax.pad(x, jnp.asarray(-jnp.inf, x.dtype), cfg)
        oh = (xp.shape[1] - 3) // stride + 1
        ow = (xp.shape[2] - 3) // stride + 1
        out = None
        for a in range(3):
            for b in range(3):
                t = xp[
                    :,
                    a : a + (oh - 1) * stride + 1 : stride,
                    b : b + (ow - 1) * stride + 1 : stride,
                ]
                out = t if out is None else jnp.maximum(out, t)
        return out

    return f


def separable(stride, pads):
    def f(x):
        for axis in (2, 1):
            taps = [_tap(x, [(axis, j)], pads, stride) for j in range(3)]
            x = jnp.maximum(jnp.maximum(taps[0], taps[1]), taps[2])
        return x

    return f


def _traced_with(fn, name: str, value):
    """fn traced with ``_windows.<name>`` set to value. ``fn`` calls the public function's own
    code (``__wrapped__``), not its jitted, cached wrapper, whose cache would hand back the
    program the engine traced."""

    def f(x):
        saved = getattr(_windows, name)
        setattr(_windows, name, value)
        try:
            return fn(x)
        finally:
            setattr(_windows, name, saved)

    return f


def regions(fn):
    """fn with the clamped reads switched off: the interior/border regions."""
    return _traced_with(fn, "_clamped", lambda w: None)


def clamped(fn):
    """fn with the clamped reads used for strided windows too."""
    return _traced_with(fn, "_CLAMP_STRIDED", True)


def _clamped_avg(mask_of):
    """Average 3x3/1 pad 1 from taps at clamped positions, 0 outside the window."""

    def f(x):
        n_h, n_w = x.shape[1:3]
        total = None
        for a in (-1, 0, 1):
            for b in (-1, 0, 1):
                t = x
                for axis, off, n in ((1, a, n_h), (2, b, n_w)):
                    if off:
                        idx = np.clip(np.arange(n) + off, 0, n - 1)
                        t = jnp.take(t, idx, axis=axis, mode="clip")
                keep = mask_of(a, b, n_h, n_w)
                if keep is not None:
                    t = jnp.where(keep, t, jnp.zeros((), t.dtype))
                total = t if total is None else total + t
        return total * jnp.asarray(1 / 9, x.dtype)

    return f


def _const_mask(a, b, n_h, n_w):
    mh = (np.arange(n_h) + a >= 0) & (np.arange(n_h) + a < n_h)
    mw = (np.arange(n_w) + b >= 0) & (np.arange(n_w) + b < n_w)
    m = mh[:, None] & mw[None, :]
    return None if m.all() else m[None, :, :, None]


def _iota_mask(a, b, n_h, n_w):
    ih = lax.broadcasted_iota(jnp.int32, (1, n_h, 1, 1), 1)
    iw = lax.broadcasted_iota(jnp.int32, (1, 1, n_w, 1), 2)
    conds = [
        c
        for c, on in (
            (ih >= 1, a < 0),
            (ih < n_h - 1, a > 0),
            (iw >= 1, b < 0),
            (iw < n_w - 1, b > 0),
        )
        if on
    ]
    if not conds:
        return None
    m = conds[0]
    for c in conds[1:]:
        m = m & c
    return m


def cases():
    """(name, run shape, {formulation: fn})."""
    one, caffe = {1: (1, 1), 2: (1, 1)}, {1: (0, 1), 2: (0, 1)}
    raw = gapjax.max_pool.__wrapped__
    max3 = lambda x: raw(x, 3, stride=1, padding=1)  # noqa: E731
    nin = lambda x: raw(x, 3, stride=2, convention="caffe")  # noqa: E731
    nin_rows = {
        "engine": lambda x: gapjax.max_pool(x, 3, stride=2, convention="caffe"),
        "clamped": clamped(nin),
        "regions": regions(nin),
        "flax": lambda x: linen.max_pool(x, (3, 3), (2, 2), padding=((0, 1), (0, 1))),
        "tap_pads": tap_pads(2, caffe),
        "padded_copy": padded_copy(2, caffe),
        "separable": separable(2, caffe),
    }
    return [
        (
            "max 3x3/1 pad 1",
            LARGE,
            {
                "engine": lambda x: gapjax.max_pool(x, 3, stride=1, padding=1),
                "regions": regions(max3),
                "flax": lambda x: linen.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1))),
                "tap_pads": tap_pads(1, one),
                "padded_copy": padded_copy(1, one),
                "separable": separable(1, one),
            },
        ),
        ("NIN max 3x3/2 (Caffe), first pool", LARGE, nin_rows),
        ("NIN max 3x3/2 (Caffe), second pool", (128, 16, 16, 192), nin_rows),
        (
            "avg 3x3/1 pad 1",
            LARGE,
            {
                "engine": lambda x: gapjax.avg_pool(x, 3, stride=1, padding=1),
                "flax": lambda x: linen.avg_pool(
                    x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=True
                ),
                "clamped_mask": _clamped_avg(_const_mask),
                "clamped_iota": _clamped_avg(_iota_mask),
            },
        ),
    ]


def compile_seconds(fn, shape) -> float:
    jax.clear_caches()
    t = time.perf_counter()
    jax.jit(fn).lower(jax.ShapeDtypeStruct(shape, jnp.float32)).compile()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    compile_seconds(lambda v: v + 1, (3,))
    print("# Small padded windows on CPU: compile time against run time (forward)\n")
    print(describe(machine(), versions()) + "\n")
    print(
        f"compile: s on {'x'.join(map(str, SMALL))} (median of 5); run: ms per call on the "
        f"shape named (median of {args.rounds} interleaved rounds of 3 calls); "
        "ratios against flax (compile) and the engine (run).\n"
    )
    rows = []
    for name, shape, fns in cases():
        x = jax.random.normal(jax.random.key(0), shape)
        want = np.asarray(fns["engine"](x))
        jitted = {}
        for k, f in fns.items():
            jitted[k] = jax.jit(f)
            np.testing.assert_allclose(
                np.asarray(jitted[k](x)), want, rtol=1e-6, atol=1e-6, err_msg=k
            )
        comp = {
            k: statistics.median(compile_seconds(f, SMALL) for _ in range(5))
            for k, f in fns.items()
        }
        for f in jitted.values():  # recompile what clear_caches dropped, then warm up
            f(x).block_until_ready()
        runs = {k: [] for k in fns}
        for _ in range(args.rounds):
            order = list(fns)
            random.shuffle(order)
            for k in order:
                t = time.perf_counter()
                for _ in range(3):
                    y = jitted[k](x)
                y.block_until_ready()
                runs[k].append((time.perf_counter() - t) / 3 * 1e3)
        print(f"## {name}, run on {'x'.join(map(str, shape))}\n")
        print("| formulation | compile s | vs flax | run ms | vs engine |")
        print("|---|---:|---:|---:|---:|")
        run_med = {k: statistics.median(v) for k, v in runs.items()}
        for k in fns:
            row = {
                "case": name,
                "run_shape": list(shape),
                "formulation": k,
                "compile_s": comp[k],
                "compile_vs_flax": comp[k] / comp["flax"],
                "run_ms": run_med[k],
                "run_vs_engine": run_med[k] / run_med["engine"],
                "run_rounds_ms": runs[k],
            }
            rows.append(row)
            print(
                f"| {k} | {comp[k]:.3f} | {row['compile_vs_flax']:.2f} | {run_med[k]:.1f} | "
                f"{row['run_vs_engine']:.2f} |"
            )
        print()
        sys.stdout.flush()
    save_result(args.json, "window_formulations.py", argv, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
