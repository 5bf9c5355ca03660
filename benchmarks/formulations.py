"""Time the CPU formulations of ``gapjax.pooling._kernels`` against plain ``jnp``.

    python benchmarks/formulations.py [--quick] [--repeats N] [--json PATH] [--md PATH]

``_kernels`` keeps a formulation other than plain ``jnp`` only where it wins on CPU (or where
plain ``jnp`` is wrong: XLA:CPU's reduce-max drops NaN). This script is the evidence: for each
reduction it times every candidate on the shapes of ``benchmarks/pooling.py``, in interleaved
rounds (median of the per-call times of blocks of about 10 ms), and marks the one ``_kernels``
picks. Shapes are (batch, height, width, channels); "cf" rows pool the same sizes in channels
first. Candidates:

  sum:  plain  ``jnp.sum`` (YNNPACK on CPU)
        dot    ones(1, r) @ x.reshape(P, r, k Q): Eigen's matrix-vector product, rows widened
        gemv   x.reshape(P, R) @ ones(R) (contiguous rows)
  max:  plain  ``jnp.max``: NOT NaN-exact on CPU for float32 (the speed to match); exact for
               16-bit floats, which XLA reduces in float32
        check  ``jnp.max`` plus a sum that is NaN where a NaN was dropped (exact)
        tree   balanced elementwise ``jnp.maximum`` trees over 16 row chunks, then a reduce
  grad: plain  ``jax.vjp`` of ``jnp.max`` (ties split the cotangent)
        first  the max plus the index of its first occurrence, then ``where(i == index, g, 0)``
"""

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np
from pooling import DEFAULT_SHAPES, describe, save_result

from gapjax.pooling import _kernels as K


def _candidates(x: jax.Array, axes: tuple[int, ...]) -> dict:
    """name -> (fn of x, whether ``_kernels`` picks it)."""
    P, R, Q = K._collapse(x.shape, axes)
    out = {}
    plan = K._sum_plan(x, axes)
    out["sum/plain"] = (lambda v: jnp.sum(v, axis=axes, dtype=jnp.float32), plan == "plain")
    if x.dtype == jnp.float32:
        if Q > 1:
            out["sum/dot"] = (
                lambda v: K._batched_dot_sum(v.reshape(P, R, Q), P, R, Q),
                plan == "dot",
            )
        else:
            out["sum/gemv"] = (
                lambda v: jnp.matmul(v.reshape(P, R), jnp.ones((R,), v.dtype)),
                plan == "gemv",
            )
    half = x.dtype.itemsize < 4
    out["max/plain"] = (lambda v: jnp.max(v, axis=axes), half)
    out["max/check"] = (lambda v: _check_max(v, axes), not half and Q == 1)
    out["max/tree"] = (lambda v: K._tree_max(v.reshape(P, R, Q)), not half and Q > 1)

    def plain_grad(v):
        return jax.vjp(lambda u: jnp.max(u, axis=axes), v)[1](
            jnp.ones((P * Q,), v.dtype).reshape([d for i, d in enumerate(v.shape) if i not in axes])
        )[0]

    def first_grad(v):
        return jax.grad(lambda u: K.spatial_max(u, axes).astype(jnp.float32).sum())(v)

    out["grad/plain"] = (plain_grad, False)
    out["grad/first"] = (first_grad, True)
    return out


def _check_max(v, axes):
    P, R, Q = K._collapse(v.shape, axes)
    x3 = v.reshape((P, R, Q) if Q > 1 else (P, R))
    m = jnp.max(x3, axis=1)
    bad = jnp.any(jnp.isnan(jnp.sum(x3, axis=1)))
    return jax.lax.cond(bad, lambda: K._nan_exact(x3, m, (1,)), lambda: m)


def time_round_robin(fns: dict, rounds: int, target_s: float) -> dict:
    """name -> median ms per call over interleaved rounds of blocks of about target_s."""
    ks = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn())
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ks[name] = max(1, round(target_s / max(time.perf_counter() - t, 1e-7)))
    times = {name: [] for name in fns}
    for r in range(rounds):
        names = list(fns)
        np.random.default_rng(r).shuffle(names)
        for name in names:
            t = time.perf_counter()
            for _ in range(ks[name]):
                y = fns[name]()
            jax.block_until_ready(y)
            times[name].append((time.perf_counter() - t) / ks[name])
    return {name: 1e3 * statistics.median(v) for name, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--md", type=str, default=None)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args(argv)
    rounds = 5 if args.quick else args.repeats
    rows = []
    for dtype in args.dtypes:
        for shape in DEFAULT_SHAPES:
            for layout in ("cl", "cf"):
                B, H, W, C = shape
                if layout == "cl":
                    x_shape, axes = (B, H, W, C), (1, 2)
                else:
                    x_shape, axes = (B, C, H, W), (2, 3)
                x = jnp.asarray(np.random.default_rng(0).standard_normal(x_shape), dtype)
                cands = _candidates(x, axes)
                fns = {name: functools.partial(jax.jit(fn), x) for name, (fn, _) in cands.items()}
                ms = time_round_robin(fns, rounds, 0.004 if args.quick else 0.01)
                for name, (_, picked) in cands.items():
                    op, form = name.split("/")
                    rows.append(
                        {
                            "dtype": dtype,
                            "shape": "x".join(map(str, shape)),
                            "layout": layout,
                            "op": op,
                            "formulation": form,
                            "picked": picked,
                            "median_ms": ms[name],
                        }
                    )
                line = "  ".join(f"{n}={ms[n]:.3f}{'*' if cands[n][1] else ''}" for n in cands)
                print(f"{dtype} {layout} {shape}: {line}", flush=True)
    result = save_result(args.json, "formulations.py", argv, rounds=rounds, rows=rows)
    if args.md:
        Path(args.md).write_text(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [
        "# CPU formulations of `gapjax.pooling._kernels` against plain `jnp`",
        "",
        f"`{result['command']}`, {result['date']}; "
        + describe(result["machine"], result["versions"])
        + f". ms per call, median of {result['rounds']} interleaved rounds; **bold**: the "
        "formulation `_kernels` uses. `max/plain` (`jnp.max`) drops NaN on CPU: it is the speed "
        "to match, not a usable formulation.",
        "",
    ]
    groups = {}
    for r in result["rows"]:
        groups.setdefault((r["dtype"], r["shape"], r["layout"]), []).append(r)
    forms = []
    for rs in groups.values():
        for r in rs:
            key = f"{r['op']}/{r['formulation']}"
            if key not in forms:
                forms.append(key)
    lines.append("| dtype | shape | layout | " + " | ".join(forms) + " |")
    lines.append("|---|---|---|" + "---:|" * len(forms))
    for (dtype, shape, layout), rs in groups.items():
        cells = {f"{r['op']}/{r['formulation']}": r for r in rs}
        row = []
        for f in forms:
            r = cells.get(f)
            if r is None:
                row.append("-")
            else:
                t = f"{r['median_ms']:.3f}"
                row.append(f"**{t}**" if r["picked"] else t)
        lines.append(f"| {dtype} | {shape} | {layout} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
