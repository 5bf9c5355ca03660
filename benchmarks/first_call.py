"""Time a fresh process's first calls: from ``import gapjax`` to the first results.

    python benchmarks/first_call.py [--json PATH] [--runs N]

What a researcher pays before the first number: each run starts a new Python process with empty
caches (a new, empty JAX compilation cache directory and XDG cache home) and times, in order,

  import      ``import jax, gapjax`` (jax's own import included)
  global      ``global_avg_pool`` and ``global_max_pool`` with their gradients, (128, 8, 8, 10)
              float32 (NIN's head: the class maps before the GAP)
  nin pools   NIN's pools with gradients: max 3x3/2 (Caffe) on (128, 32, 32, 96), avg 3x3/2
              (Caffe) on (128, 16, 16, 192)

each to ``block_until_ready`` of its first result (tracing, compiling and running). The same
work written by hand (``jnp.mean`` / ``jnp.max`` and flax's ``max_pool`` / ``avg_pool`` with
their gradients) runs in its own fresh process as the yardstick. Reported: the median over
``--runs`` processes of each phase.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import jax, jax.numpy as jnp
SIDE = sys.argv[1]
if SIDE == "gapjax":
    import gapjax
else:
    from flax import linen
t_import = time.perf_counter() - t0
key = jax.random.key(0)
head = jax.random.normal(key, (128, 8, 8, 10))
m1 = jax.random.normal(key, (128, 32, 32, 96))
m2 = jax.random.normal(key, (128, 16, 16, 192))
jax.block_until_ready((head, m1, m2))

def with_grad(f):
    return jax.jit(jax.value_and_grad(lambda x: jnp.sum(jnp.sin(f(x)))))

if SIDE == "gapjax":
    glob = [gapjax.global_avg_pool, gapjax.global_max_pool]
    pools = [
        lambda x: gapjax.max_pool(x, 3, stride=2, convention="caffe"),
        lambda x: gapjax.avg_pool(x, 3, stride=2, convention="caffe"),
    ]
else:
    glob = [lambda x: jnp.mean(x, axis=(1, 2)), lambda x: jnp.max(x, axis=(1, 2))]
    # Caffe's rounding: 32 -> 16 and 16 -> 8 take one cell of padding at the end.
    pools = [
        lambda x: linen.max_pool(x, (3, 3), (2, 2), padding=((0, 1), (0, 1))),
        lambda x: linen.avg_pool(x, (3, 3), (2, 2), padding=((0, 1), (0, 1))),
    ]
out = {"import": t_import}
t = time.perf_counter()
for f in glob:
    jax.block_until_ready(with_grad(f)(head))
out["global"] = time.perf_counter() - t
t = time.perf_counter()
for f, x in zip(pools, (m1, m2)):
    jax.block_until_ready(with_grad(f)(x))
out["nin pools"] = time.perf_counter() - t
print("RESULT " + json.dumps(out))
"""


def run_child(side: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(Path(tmp) / "jax-cache"),
            XDG_CACHE_HOME=str(Path(tmp) / "xdg"),
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, side],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp,
        )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per side")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    from pooling import describe, machine, save_result, versions

    runs = {"gapjax": [], "hand-written": []}
    for _ in range(args.runs):
        for side in runs:  # interleaved
            runs[side].append(run_child("gapjax" if side == "gapjax" else "plain"))
    phases = ["import", "global", "nin pools"]
    med = {s: {p: statistics.median(r[p] for r in rs) for p in phases} for s, rs in runs.items()}
    for s in med:
        med[s]["after import"] = med[s]["global"] + med[s]["nin pools"]
    m = machine()
    print(f"# first calls in a fresh process (median of {args.runs} runs, seconds)\n")
    print(describe(m, versions()) + "\n")
    print("| phase | gapjax | hand-written (jnp, flax) |")
    print("|---|---:|---:|")
    for p in [*phases, "after import"]:
        print(f"| {p} | {med['gapjax'][p]:.2f} | {med['hand-written'][p]:.2f} |")
    save_result(args.json, "first_call.py", argv, runs=runs, median_s=med)
    return 0


if __name__ == "__main__":
    sys.exit(main())
