"""NIN's convolutions on CPU: gapjax.nn.conv_general_dilated against lax and PyTorch, per layer.

    python benchmarks/conv_cpu.py [--batch 128] [--rounds 5] [--skip-lax] [--skip-torch]
        [--out benchmarks/results/conv_cpu_float32]

For each convolution of NIN on CIFAR-10 (float32, channels last, stride 1, "same" padding;
batch 128 by default) it times the forward pass and forward + backward (the input and kernel
gradients, ``jax.vjp`` with a fixed cotangent; PyTorch: ``backward`` with ``x.requires_grad``)
of:

  gapjax  ``gapjax.nn.conv_general_dilated``: on CPU the formulation it routes each layer to
          (1x1: products over channels; conv1: im2col + dot; conv2/conv3: Winograd F(4x4, r x r);
          all custom_vjp), what ``gapjax.nn.Conv`` and ``MLPConv`` run;
  lax     ``lax.conv_general_dilated`` (XLA:CPU's convolution, what ``nnx.Conv`` runs);
  torch   ``torch.nn.functional.conv2d`` on channels_last tensors (oneDNN), no bias.

Rounds are interleaved (one call of each implementation per round, after one warm-up call
each) and the median is reported, so that a machine whose speed drifts treats every
implementation alike. A jitted (2048, 2048) ``jnp.dot`` timed in the same rounds gives the
machine's matrix-product rate as a yardstick; GFLOP/s count 2 x MACs per pass of the direct
convolution (fwd+bwd: 3x the forward's), also for Winograd, which does fewer multiplications: an
effective rate that can pass the yardstick. Output: a markdown table on stdout and in
PATH_STEM.md, everything in PATH_STEM.json.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

try:
    import gapjax  # noqa: F401
except ImportError:  # run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gapjax import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import cpu_info, versions

ROOT = Path(__file__).resolve().parents[1]
DN = ("NHWC", "HWIO", "NHWC")
# (name, side, kernel, in, out): every convolution of NIN on CIFAR-10.
LAYERS = (
    ("conv1 5x5", 32, 5, 3, 192),
    ("cccp1 1x1", 32, 1, 192, 160),
    ("cccp2 1x1", 32, 1, 160, 96),
    ("conv2 5x5", 16, 5, 96, 192),
    ("cccp3/4 1x1", 16, 1, 192, 192),
    ("conv3 3x3", 8, 3, 192, 192),
    ("cccp5 1x1", 8, 1, 192, 192),
    ("cccp6 1x1", 8, 1, 192, 10),
)


def _jax_pair(conv, x, w, g):
    k = w.shape[0]
    pads = ((k // 2, k // 2), (k // 2, k // 2))

    def f(x, w):
        return conv(x, w, (1, 1), pads, dimension_numbers=DN)

    fwd = jax.jit(f)
    both = jax.jit(lambda x, w, g: jax.vjp(f, x, w)[1](g))
    return (lambda: jax.block_until_ready(fwd(x, w))), (
        lambda: jax.block_until_ready(both(x, w, g))
    )


def _torch_pair(torch, x, w, g):
    k = w.shape[0]
    xt = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)
    xt = xt.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    wt = torch.from_numpy(np.asarray(w)).permute(3, 2, 0, 1)
    wt = wt.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    gt = torch.from_numpy(np.asarray(g)).permute(0, 3, 1, 2)
    gt = gt.contiguous(memory_format=torch.channels_last)
    conv2d = torch.nn.functional.conv2d

    def fwd():
        with torch.no_grad():
            return conv2d(xt, wt, padding=k // 2)

    def both():
        xt.grad = wt.grad = None
        conv2d(xt, wt, padding=k // 2).backward(gt)

    return fwd, both


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-lax", action="store_true", help="XLA:CPU's conv (slow gradients)")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_cpu_float32"))
    args = ap.parse_args(argv)
    torch = None
    if not args.skip_torch:
        try:
            import torch
        except ImportError:
            pass
    impls = ["gapjax"] + ([] if args.skip_lax else ["lax"]) + (["torch"] if torch else [])
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(2048, 2048)), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    yard = []
    rows = []
    load_start = os.getloadavg()
    for name, side, k, cin, cout in LAYERS:
        b = args.batch
        x = jnp.asarray(rng.normal(size=(b, side, side, cin)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.05, jnp.float32)
        g = jnp.asarray(rng.normal(size=(b, side, side, cout)), jnp.float32)
        pairs = {}
        for impl in impls:
            if impl == "torch":
                pairs[impl] = _torch_pair(torch, x, w, g)
            else:
                conv = nn.conv_general_dilated if impl == "gapjax" else lax.conv_general_dilated
                pairs[impl] = _jax_pair(conv, x, w, g)
            for fn in pairs[impl]:
                fn()  # compile / warm up
        times = {(i, p): [] for i in impls for p in ("fwd", "both")}
        for _ in range(args.rounds):
            for impl in impls:
                times[impl, "fwd"].append(_time(pairs[impl][0]))
                times[impl, "both"].append(_time(pairs[impl][1]))
                if torch is not None:
                    time.sleep(0.05)  # PyTorch's OpenMP workers spin after a call
            yard.append(_time(lambda: dot(a, a).block_until_ready()))
        flops = 2.0 * b * side * side * k * k * cin * cout
        row = {"layer": name, "shape": f"{b}x{side}x{side}, {k}x{k}, {cin}->{cout}"}
        row["gflop_fwd"] = flops / 1e9
        for (impl, part), ts in times.items():
            ms = 1e3 * statistics.median(ts)
            row[f"{impl}_{part}_ms"] = ms
            row[f"{impl}_{part}_gflop_per_s"] = flops * (3 if part == "both" else 1) / ms / 1e6
        rows.append(row)
        print(
            f"{name:12s} "
            + "  ".join(
                f"{i}: {row[f'{i}_fwd_ms']:.1f} / {row[f'{i}_both_ms']:.1f} ms" for i in impls
            ),
            flush=True,
        )
    yard_gflops = 2.0 * 2048**3 / statistics.median(yard) / 1e9
    totals = {
        f"{i}_{p}_ms": sum(r[f"{i}_{p}_ms"] for r in rows) for i in impls for p in ("fwd", "both")
    }
    result = {
        "command": ["python", "benchmarks/conv_cpu.py", *(argv or sys.argv[1:])],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_start,
            "load_average_at_end": os.getloadavg(),
            "torch_threads": torch.get_num_threads() if torch else None,
            **cpu_info(),
        },
        "versions": versions(torch),
        "settings": {"batch": args.batch, "rounds": args.rounds, "impls": impls},
        "yardstick_dot_2048_gflop_per_s": yard_gflops,
        "rows": rows,
        "totals": totals,
        "notes": args.note,
    }
    m, v = result["machine"], result["versions"]
    setting = (
        f"{m.get('cpu_model')} (family {m.get('cpu_family')} model {m.get('cpu_model_number')}, "
        f"{m.get('vector_isa')}), {m['cpu_count']} CPUs; python {v['python']}, jax {v['jax']}, "
        f"jaxlib {v['jaxlib']}, torch {v['torch']} ({m['torch_threads']} threads); "
        f"{result['date']}. Load average at the start {'/'.join(f'{x:.1f}' for x in load_start)}"
        f", at the end {'/'.join(f'{x:.1f}' for x in m['load_average_at_end'])}."
    )
    lines = [
        "# NIN's convolutions on CPU: gapjax vs lax vs PyTorch",
        "",
        setting,
        "",
        f"Command: `{' '.join(result['command'])}`",
        "",
        f"float32, channels last, batch {args.batch}, stride 1, same padding; ms per call, median "
        f"of {args.rounds} interleaved rounds; fwd+bwd = forward, input and kernel gradients. "
        f"Yardstick: jitted (2048, 2048) jnp.dot in the same rounds, {yard_gflops:.1f} GFLOP/s. "
        "GFLOP/s count a direct convolution's multiply-adds; gapjax's Winograd layers (conv2, "
        "conv3) do fewer, so theirs is an effective rate.",
        "",
        "| layer | shape | "
        + " | ".join(f"{i} fwd | {i} fwd+bwd" for i in impls)
        + " | gapjax fwd+bwd GFLOP/s |",
        "|---|---|" + "---:|---:|" * len(impls) + "---:|",
    ]
    for r in rows:
        cells = " | ".join(f"{r[f'{i}_fwd_ms']:.1f} | {r[f'{i}_both_ms']:.1f}" for i in impls)
        lines.append(
            f"| {r['layer']} | {r['shape']} | {cells} | {r['gapjax_both_gflop_per_s']:.1f} |"
        )
    cells = " | ".join(f"{totals[f'{i}_fwd_ms']:.1f} | {totals[f'{i}_both_ms']:.1f}" for i in impls)
    lines.append(f"| all (cccp3/4 once) | | {cells} | |")
    if args.note:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in args.note]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    Path(f"{out}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
