"""Compile time of windowed and adaptive pooling against the nearest hand-written equivalent.

    python benchmarks/compile_time.py [--repeats N] [--json PATH] [--only NAME ...] [--no-step]

In JAX every new shape or setting is a new compilation, so researchers pay it on every change of
batch, image size or pool. For each case below this times ``jax.jit(f).lower(x).compile()``
(tracing, lowering and XLA's compilation; the persistent compilation cache off and the
in-memory caches cleared before each timing) for the forward
pass and for the gradient of the summed output, of gapjax and of the hand-written equivalent
(flax's ``max_pool`` / ``avg_pool``, or ``jnp.max`` / ``jnp.mean`` for a global window), in
interleaved repeats, and reports the medians and the ratio gapjax / hand-written (goal: <= 1.5).

The whole program users compile last: the NIN CIFAR-10 training step of ``gapjax.train``
(configs/nin_cifar10_aug.py: on-device crop and flip, forward, backward, Caffe SGD), batch 128,
as it is and with its two 3x3/2 Caffe max pools computed by flax's ``max_pool`` instead (the
same step otherwise).
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
from flax import linen
from pooling import describe, machine, save_result, versions

import gapjax
from gapjax.nn import pooling as nn_pooling

jax.config.update("jax_enable_compilation_cache", False)


def _cases() -> list[tuple[str, tuple[int, ...], object, object]]:
    """(name, shape, gapjax fn, hand-written fn)."""
    cases = [
        (
            "NIN max 3x3/2 (Caffe)",
            (8, 32, 32, 96),
            lambda x: gapjax.max_pool(x, 3, stride=2, convention="caffe"),
            # Caffe rounds up: 32 -> 16 reads one cell of padding at the end.
            lambda x: linen.max_pool(x, (3, 3), (2, 2), padding=((0, 1), (0, 1))),
        ),
        (
            "max 7x7/1 pad 3",
            (8, 56, 56, 64),
            lambda x: gapjax.max_pool(x, 7, stride=1, padding=3),
            lambda x: linen.max_pool(x, (7, 7), (1, 1), padding=((3, 3), (3, 3))),
        ),
        (
            "adaptive max 11x11x11 -> 1",
            (2, 11, 11, 11, 8),
            lambda x: gapjax.adaptive_max_pool(x, 1),
            lambda x: jnp.max(x, axis=(1, 2, 3), keepdims=True),
        ),
        (
            "adaptive avg 56 -> 7",
            (8, 56, 56, 64),
            lambda x: gapjax.adaptive_avg_pool(x, 7),
            lambda x: linen.avg_pool(x, (8, 8), (8, 8)),
        ),
    ]
    for k in (3, 7, 15, 31):
        pad = ((k // 2, k // 2), (k // 2, k // 2))
        cases.append(
            (
                f"max {k}x{k}/1 pad {k // 2}",
                (4, 32, 32, 16),
                lambda x, k=k: gapjax.max_pool(x, k, stride=1, padding=k // 2),
                lambda x, k=k, pad=pad: linen.max_pool(x, (k, k), (1, 1), padding=pad),
            )
        )
        cases.append(
            (
                f"avg {k}x{k}/1 pad {k // 2}",
                (4, 32, 32, 16),
                lambda x, k=k: gapjax.avg_pool(x, k, stride=1, padding=k // 2),
                lambda x, k=k, pad=pad: linen.avg_pool(x, (k, k), (1, 1), padding=pad),
            )
        )
    return cases


def compile_seconds(fn, x) -> float:
    jax.clear_caches()  # JAX keeps compiled programs in memory: each timing starts without them
    t = time.perf_counter()
    jax.jit(fn).lower(x).compile()
    return time.perf_counter() - t


def grad_of(fn):
    return jax.grad(lambda v: jnp.sum(fn(v)))


STEP_BATCH = 128


@contextlib.contextmanager
def _flax_pools():
    """NIN's pool modules compute flax's ``max_pool`` while tracing (Caffe's 3x3/2 rounding on
    even sizes: one cell of padding at the end of each axis)."""
    original = nn_pooling.MaxPool.__call__

    def call(self, x):
        s = self.settings
        if (s.get("kernel_size"), s.get("stride"), s.get("convention")) != (3, 2, "caffe"):
            raise ValueError(f"the flax stand-in covers NIN's 3x3/2 Caffe pool only, got {s}")
        if any(d % 2 for d in x.shape[1:3]):
            raise ValueError(f"the flax stand-in needs even sizes, got {x.shape}")
        return linen.max_pool(x, (3, 3), (2, 2), padding=((0, 1), (0, 1)))

    nn_pooling.MaxPool.__call__ = call
    try:
        yield
    finally:
        nn_pooling.MaxPool.__call__ = original


def _train_step_args():
    """(step, args): ``gapjax.train``'s jitted NIN CIFAR-10 step, set up as
    benchmarks/train_throughput.py times it, and its arguments (the batch abstract)."""
    from train_throughput import _gapjax_setup, _totals

    model, step, state, mesh, _ = _gapjax_setup(STEP_BATCH, "float32")
    if list(model.spec.pools) != ["max", "max"]:
        raise ValueError(f"expected NIN CIFAR-10's two max pools, got {model.spec.pools}")
    side = model.spec.input_shape
    batch = {
        "images": jax.ShapeDtypeStruct((STEP_BATCH, *side), jnp.float32),
        "labels": jax.ShapeDtypeStruct((STEP_BATCH,), jnp.int32),
    }
    return step, (state, _totals(mesh), batch, jax.random.key(0))


def step_compile_seconds(step, args, flax_pools: bool) -> float:
    jax.clear_caches()
    with _flax_pools() if flax_pools else contextlib.nullcontext():
        t = time.perf_counter()
        step.lower(*args).compile()
        return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--only", nargs="*", default=None, help="case names containing these")
    ap.add_argument("--no-step", action="store_true", help="skip the NIN training step row")
    args = ap.parse_args(argv)
    cases = [c for c in _cases() if args.only is None or any(s in c[0] for s in args.only)]
    # Warm JAX's own one-time costs (first trace, first compile) before timing anything.
    compile_seconds(lambda v: jnp.sin(v) + 1, jnp.zeros((3,)))
    m, v = machine(), versions()
    print(f"# compile time, seconds (median of {args.repeats})\n")
    print(describe(m, v) + "\n")
    print("| pool | shape | pass | gapjax | hand-written | ratio |")
    print("|---|---|---|---:|---:|---:|")
    rows = []
    for name, shape, ours, theirs in cases:
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        for kind in ("forward", "gradient"):
            f, g = (ours, theirs) if kind == "forward" else (grad_of(ours), grad_of(theirs))
            t_ours, t_theirs = [], []
            for _ in range(args.repeats):
                t_ours.append(compile_seconds(f, x))
                t_theirs.append(compile_seconds(g, x))
            a, b = statistics.median(t_ours), statistics.median(t_theirs)
            rows.append(
                {
                    "pool": name,
                    "shape": "x".join(map(str, shape)),
                    "pass": kind,
                    "gapjax_s": a,
                    "hand_written_s": b,
                    "ratio": a / b,
                    "gapjax_all_s": t_ours,
                    "hand_written_all_s": t_theirs,
                }
            )
            print(f"| {name} | {rows[-1]['shape']} | {kind} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
            sys.stdout.flush()
    if not args.no_step:
        step, step_args = _train_step_args()
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            t_ours.append(step_compile_seconds(step, step_args, flax_pools=False))
            t_theirs.append(step_compile_seconds(step, step_args, flax_pools=True))
        a, b = statistics.median(t_ours), statistics.median(t_theirs)
        shape = f"{STEP_BATCH}x32x32x3"
        rows.append(
            {
                "pool": "NIN CIFAR-10 training step (gapjax.train), pools gapjax vs flax",
                "shape": shape,
                "pass": "train step",
                "gapjax_s": a,
                "hand_written_s": b,
                "ratio": a / b,
                "gapjax_all_s": t_ours,
                "hand_written_all_s": t_theirs,
            }
        )
        print(f"| {rows[-1]['pool']} | {shape} | train step | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    save_result(args.json, "compile_time.py", argv, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
