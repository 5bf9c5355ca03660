"""Benchmark global average / max pooling: gapjax vs jnp, flax and PyTorch.

    python benchmarks/pooling.py [--quick] [--repeats N] [--json PATH] [--shapes B,H,W,C ...]
                                 [--dtype float32|bfloat16]
                                 [--data-format channels_last|channels_first]
    python benchmarks/pooling.py --suite windows [--quick] [--repeats N] [--json PATH]

The default suite times global pooling; ``--suite windows`` times NIN's windowed pools and
adaptive pooling (WINDOW_CASES below: gapjax against flax.linen and PyTorch, channels last).

Shapes are given as (batch, height, width, channels) whatever the data format; with
``--data-format channels_first`` the arrays are (batch, channels, height, width) and PyTorch gets a
contiguous NCHW tensor (a channels_last tensor otherwise).

Competitors, per shape and pass (forward, forward+backward):
  gapjax    gapjax.global_avg_pool / global_max_pool (falls back to gapjax.pooling._kernels
            spatial_mean / spatial_max while the public functions do not exist)
  jnp       jnp.mean / jnp.max over the spatial axes
  flax      flax.linen.avg_pool / max_pool with window_shape = (H, W), reshaped to (B, C)
  torch     F.adaptive_avg_pool2d / adaptive_max_pool2d(t, 1) (skipped if torch is missing)
  yardstick jnp.sum over the whole array (forward) or jnp.sum plus a broadcast of its
            cotangent (forward+backward): memory bandwidth measured in the same rounds.
Forward+backward is one jitted function returning (y, dx) from jax.vjp; in PyTorch, the forward
and .backward(g) with the same cotangent, reading t.grad.

Methodology: every competitor is compiled and warmed up first, and its block size K is chosen so
that K consecutive calls take about 20 ms (--quick: 8 ms). Then R rounds (--repeats, default 30):
each round runs every competitor of the (shape, pass) once as a block of K calls, in a fresh random
order, and records block time / K (PyTorch's blocks are followed by an untimed 50 ms pause, so that
its spinning OpenMP workers do not slow the next competitor down). A round during which other
processes used the CPU (from /proc/stat, Linux only) is discarded and rerun, at most 3R times.
Reported: the median over the rounds. GB/s counts the bytes that must move: the input (forward),
plus the gradient written (forward+backward). Ratios: "vs torch" = torch time / gapjax time (>1:
gapjax is faster), "of yardstick" = yardstick time / gapjax time (1 = as fast as a full-array sum).
"""

import argparse
import datetime
import importlib
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:  # Run from a checkout without installing.
    import gapjax  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

DEFAULT_SHAPES = [(256, 8, 8, 192), (128, 32, 32, 64), (64, 56, 56, 256), (32, 7, 7, 2048)]
OPS = ("avg", "max")
PASSES = ("forward", "forward+backward")


# --------------------------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------------------------


def _proc_busy() -> int | None:
    """Busy jiffies of the whole machine, or None where /proc/stat does not exist."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
    except OSError:
        return None
    return sum(v[:8]) - v[3] - v[4]


def _self_busy() -> int | None:
    try:
        with open("/proc/self/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(v[11]) + int(v[12])


def _others_busy(start) -> int:
    b, s = _proc_busy(), _self_busy()
    if b is None or s is None or start[0] is None:
        return 0
    return (b - start[0]) - (s - start[1])


def wait_until_quiet(max_wait: float = 120.0) -> None:
    """Waits (up to max_wait s) until no other process uses the CPU."""
    t0 = time.time()
    while time.time() - t0 < max_wait:
        start = (_proc_busy(), _self_busy())
        time.sleep(0.25)
        if _others_busy(start) <= 2:
            return


# PyTorch's OpenMP workers keep spinning on the cores for a while after each parallel region;
# the competitor timed next would share the cores with them (a JAX block timed right after a
# PyTorch block ran markedly slower than after another JAX block). So each PyTorch block is
# followed by this pause.
_TORCH_SETTLE_S = 0.05


def _block(r):
    jax.block_until_ready(r) if not _is_torch(r) else None


def _is_torch(r) -> bool:
    return type(r).__module__.startswith("torch") or (
        isinstance(r, tuple) and any(type(v).__module__.startswith("torch") for v in r)
    )


def run_rounds(fns: dict, rounds: int, target_s: float, max_call_s: float) -> dict:
    """Interleaved blocks of consecutive calls; returns name -> {median_ms, min_ms, k, rounds}.

    A competitor whose warm call takes longer than max_call_s is timed once and left out of the
    rounds (reported as "slow": its single-call time).
    """
    ks, slow = {}, {}
    for name, fn in fns.items():
        t = time.perf_counter()
        _block(fn())  # compile
        if time.perf_counter() - t > 20 * max_call_s:
            slow[name] = time.perf_counter() - t
            continue
        t = time.perf_counter()
        _block(fn())
        dt = time.perf_counter() - t
        if dt > max_call_s:
            slow[name] = dt
            continue
        _block(fn())
        t = time.perf_counter()
        _block(fn())
        dt = time.perf_counter() - t
        ks[name] = max(1, min(1000, round(target_s / max(dt, 1e-7))))
    fns = {name: fn for name, fn in fns.items() if name not in slow}
    times = {name: [] for name in fns}
    names = list(fns)
    done = discarded = 0
    wait_until_quiet()
    while done < rounds:
        random.shuffle(names)
        start = (_proc_busy(), _self_busy())
        cur = {}
        for name in names:
            fn, k = fns[name], ks[name]
            t = time.perf_counter()
            for _ in range(k):
                r = fn()
            _block(r)
            cur[name] = (time.perf_counter() - t) / k
            if _is_torch(r):
                time.sleep(_TORCH_SETTLE_S)  # let PyTorch's OpenMP workers stop spinning
        if _others_busy(start) > 3 and discarded < 3 * rounds:
            discarded += 1
            wait_until_quiet()
            continue
        for name in names:
            times[name].append(cur[name])
        done += 1
    out = {
        name: {
            "median_ms": 1e3 * statistics.median(v),
            "min_ms": 1e3 * min(v),
            "k": ks[name],
            "rounds_ms": [round(1e3 * t, 5) for t in v],
            "discarded_rounds": discarded,
            "slow": False,
        }
        for name, v in times.items()
    }
    for name, dt in slow.items():
        out[name] = {
            "median_ms": 1e3 * dt,
            "min_ms": 1e3 * dt,
            "k": 1,
            "rounds_ms": [1e3 * dt],
            "discarded_rounds": 0,
            "slow": True,
        }
    return out


# --------------------------------------------------------------------------------------------
# Competitors.
# --------------------------------------------------------------------------------------------


def gapjax_functions():
    """(avg, max, source): the public API, or the private kernels until it exists."""
    try:
        import gapjax

        return gapjax.global_avg_pool, gapjax.global_max_pool, "gapjax.global_*_pool"
    except (ImportError, AttributeError):
        from gapjax.pooling import _kernels

        def avg(x, *, data_format="channels_last"):
            return _kernels.spatial_mean(x, _spatial_axes(x.ndim, data_format)).astype(x.dtype)

        def mx(x, *, data_format="channels_last"):
            return _kernels.spatial_max(x, _spatial_axes(x.ndim, data_format))

        return avg, mx, "gapjax.pooling._kernels (public API not available)"


def _spatial_axes(ndim: int, data_format: str) -> tuple[int, ...]:
    return tuple(range(1, ndim - 1)) if data_format == "channels_last" else tuple(range(2, ndim))


def jax_competitors(shape_nhwc, data_format, dtype):
    B, H, W, C = shape_nhwc
    axes = _spatial_axes(4, data_format)
    g_avg, g_max, source = gapjax_functions()
    import flax.linen as nn

    def flax_pool(pool):
        if data_format == "channels_last":
            return lambda x: pool(x, window_shape=(H, W)).reshape(B, C)
        # (B, C, H, W, 1): pool the "spatial" dims (C, H, W) with window (1, H, W).
        return lambda x: pool(x[..., None], window_shape=(1, H, W)).reshape(B, C)

    fwd = {
        "avg": {
            "gapjax": lambda x: g_avg(x, data_format=data_format),
            "jnp": lambda x: jnp.mean(x, axis=axes).astype(x.dtype),
            "flax": flax_pool(nn.avg_pool),
        },
        "max": {
            "gapjax": lambda x: g_max(x, data_format=data_format),
            "jnp": lambda x: jnp.max(x, axis=axes),
            "flax": flax_pool(nn.max_pool),
        },
    }
    return fwd, source


def make_jax_fns(fwd: dict, x, ct, yard_x, yard_ct, skip_backward=()):
    out = {p: {op: {} for op in OPS} for p in PASSES}
    for op in OPS:
        for name, f in fwd[op].items():
            jf = jax.jit(f)
            out["forward"][op][name] = lambda jf=jf: jf(x)
            if name in skip_backward:
                continue

            def fb(x, ct, f=f):
                y, pull = jax.vjp(f, x)
                return y, pull(ct)[0]

            jfb = jax.jit(fb)
            out["forward+backward"][op][name] = lambda jfb=jfb: jfb(x, ct)
    ys = jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32))

    def yfb(x, c):
        y, pull = jax.vjp(lambda x: jnp.sum(x, dtype=jnp.float32), x)
        return y, pull(c)[0]

    yfb = jax.jit(yfb)
    yard = {"forward": lambda: ys(yard_x), "forward+backward": lambda: yfb(yard_x, yard_ct)}
    return out, yard


def torch_competitors(x_np, ct_np, data_format, dtype, threads):
    try:
        import torch
    except ImportError:
        return None, None
    torch.set_num_threads(threads)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    src = torch.from_numpy(np.ascontiguousarray(x_np)).permute(0, 3, 1, 2)  # (B, C, H, W) view
    fmt = torch.channels_last if data_format == "channels_last" else torch.contiguous_format
    # Allocated by torch's allocator (as a model's activations would be), in the right format.
    t = torch.empty(src.shape, dtype=tdtype, memory_format=fmt)
    t.copy_(src)
    assert t.is_contiguous(memory_format=fmt)
    g = torch.from_numpy(np.ascontiguousarray(ct_np)).to(tdtype).reshape(*ct_np.shape, 1, 1)
    F = torch.nn.functional
    pools = {"avg": F.adaptive_avg_pool2d, "max": F.adaptive_max_pool2d}
    tg = t.detach().clone(memory_format=fmt).requires_grad_(True)

    def fwd(pool):
        def run():
            with torch.no_grad():
                return pool(t, 1)

        return run

    def fb(pool):
        def run():
            y = pool(tg, 1)
            y.backward(g)
            dx = tg.grad
            tg.grad = None
            return y, dx

        return run

    fns = {
        "forward": {op: fwd(p) for op, p in pools.items()},
        "forward+backward": {op: fb(p) for op, p in pools.items()},
    }
    info = {"version": torch.__version__, "threads": torch.get_num_threads()}
    return fns, info


# --------------------------------------------------------------------------------------------
# The windowed suite.
# --------------------------------------------------------------------------------------------

# (name, NHWC shape, gapjax, flax.linen, torch.nn.functional on an NCHW view): the same pool.
WINDOW_CASES = [
    (
        "max 3x3/2 (Caffe ceil, NIN)",
        (128, 32, 32, 96),
        lambda g, x: g.max_pool(x, 3, stride=2, convention="caffe"),
        lambda nn, x: nn.max_pool(x, (3, 3), (2, 2), ((0, 1), (0, 1))),
        lambda F, t: F.max_pool2d(t, 3, 2, ceil_mode=True),
    ),
    (
        "max 3x3/2 (Caffe ceil, NIN)",
        (128, 16, 16, 192),
        lambda g, x: g.max_pool(x, 3, stride=2, convention="caffe"),
        lambda nn, x: nn.max_pool(x, (3, 3), (2, 2), ((0, 1), (0, 1))),
        lambda F, t: F.max_pool2d(t, 3, 2, ceil_mode=True),
    ),
    (
        "avg 3x3/1 pad 1",
        (128, 32, 32, 96),
        lambda g, x: g.avg_pool(x, 3, stride=1, padding=1),
        lambda nn, x: nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1))),
        lambda F, t: F.avg_pool2d(t, 3, 1, 1),
    ),
    (
        "avg 3x3/1 pad 1",
        (128, 16, 16, 192),
        lambda g, x: g.avg_pool(x, 3, stride=1, padding=1),
        lambda nn, x: nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1))),
        lambda F, t: F.avg_pool2d(t, 3, 1, 1),
    ),
    (
        "adaptive avg 7x7",
        (64, 56, 56, 256),
        lambda g, x: g.adaptive_avg_pool(x, 7),
        lambda nn, x: nn.avg_pool(x, (8, 8), (8, 8)),
        lambda F, t: F.adaptive_avg_pool2d(t, 7),
    ),
]


def run_windows_suite(args, result, rounds: int, target: float) -> None:
    """Times WINDOW_CASES (forward, forward+backward) and prints one table per pass."""
    import flax.linen as nn

    import gapjax

    try:
        import torch

        torch.set_num_threads(args.torch_threads)
        F = torch.nn.functional
        result["settings"]["torch"] = {"version": torch.__version__, "threads": args.torch_threads}
    except ImportError:
        torch = None
    rng = np.random.default_rng(args.seed)
    rows = {p: [] for p in args.passes}
    for name, shape, g_fn, f_fn, t_fn in WINDOW_CASES:
        x_np = rng.standard_normal(shape, dtype=np.float32)
        x = jnp.asarray(x_np)
        fwd = {"gapjax": lambda x, g_fn=g_fn: g_fn(gapjax, x), "flax": lambda x, f=f_fn: f(nn, x)}
        y_ref = np.asarray(jax.jit(fwd["flax"])(x))
        y_gap = np.asarray(jax.jit(fwd["gapjax"])(x))
        if y_gap.shape != y_ref.shape or not np.allclose(y_gap, y_ref, rtol=1e-5, atol=1e-5):
            result["warnings"].append(f"{name} {shape}: gapjax differs from flax")
        ct = jnp.asarray(rng.standard_normal(y_ref.shape, dtype=np.float32))
        if torch is not None:
            src = torch.from_numpy(x_np).permute(0, 3, 1, 2)
            t = torch.empty(src.shape, memory_format=torch.channels_last)
            t.copy_(src)
            tg = t.detach().clone(memory_format=torch.channels_last).requires_grad_(True)
            tct = torch.from_numpy(np.asarray(ct)).permute(0, 3, 1, 2)
        for p in args.passes:
            fns = {}
            for comp, f in fwd.items():
                if p == "forward":
                    jf = jax.jit(f)
                    fns[comp] = lambda jf=jf, x=x: jf(x)
                else:

                    def fb(x, ct, f=f):
                        y, pull = jax.vjp(f, x)
                        return y, pull(ct)[0]

                    jfb = jax.jit(fb)
                    fns[comp] = lambda jfb=jfb, x=x, ct=ct: jfb(x, ct)
            if torch is not None:
                if p == "forward":

                    def tf(t_fn=t_fn, t=t):
                        with torch.no_grad():
                            return t_fn(F, t)

                else:

                    def tf(t_fn=t_fn, tg=tg, tct=tct):
                        y = t_fn(F, tg)
                        y.backward(tct)
                        dx = tg.grad
                        tg.grad = None
                        return y, dx

                fns["torch"] = tf
            res = run_rounds(fns, rounds, target, args.max_call_s)
            for comp, r in res.items():
                result["measurements"].append(
                    {"case": name, "shape_nhwc": list(shape), "pass": p, "competitor": comp, **r}
                )
            gm = res["gapjax"]["median_ms"]
            fm = res["flax"]["median_ms"]
            tm = res.get("torch", {}).get("median_ms")
            rows[p].append(
                {
                    "case": name,
                    "shape": "x".join(map(str, shape)),
                    "gapjax": gm,
                    "flax": fm,
                    "torch": tm,
                    "vs_flax": fm / gm,
                    "vs_torch": tm / gm if tm else None,
                }
            )
            print(f"  {name} {shape} {p}: done", file=sys.stderr, flush=True)
    for p, rs in rows.items():
        print(f"\n## {p} (ms per call, median of {rounds} rounds; ratio > 1: gapjax faster)\n")
        print("| pool | shape | gapjax | flax | torch | vs flax | vs torch |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in rs:
            vt = "-" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}"
            print(
                f"| {r['case']} | {r['shape']} | {fmt_ms(r['gapjax'])} | {fmt_ms(r['flax'])} | "
                f"{fmt_ms(r['torch'])} | {r['vs_flax']:.2f} | {vt} |"
            )
    result["tables"] = rows


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected B,H,W,C")
    return tuple(parts)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("jax", "jaxlib", "flax", "numpy", "torch"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def cpu_model_and_isa() -> tuple[str, str]:
    """(CPU model name, widest x86 vector ISA: AVX-512, AVX2, AVX or SSE) from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == (
                    platform.processor() or platform.machine()
                ):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse2", "SSE2")):
        if flag in flags:
            return model, name
    return model, "unknown"


def machine() -> dict:
    model, isa = cpu_model_and_isa()
    return {
        "cpu_model": model,
        "vector_isa": isa,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_backend": jax.default_backend(),
    }


def describe(m: dict, v: dict) -> str:
    """One line naming the machine and the versions, for the tables."""
    return (
        f"{m['cpu_model']} ({m['vector_isa']}), {m['cpu_count']} CPUs; python {v['python']}, "
        f"jax {v['jax']}, jaxlib {v['jaxlib']}, numpy {v['numpy']}, torch {v['torch'] or '-'}"
    )


def save_result(path: str | None, script: str, argv, **fields) -> dict:
    """The run's record (command, date, machine, versions, then ``fields``), written as JSON
    to ``path`` when given; returned either way."""
    result = {
        "command": f"python benchmarks/{script} "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "versions": versions(),
        **fields,
    }
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1) + "\n")
    return result


def check_results(fns: dict, op: str) -> str | None:
    """Compares every JAX competitor's output with jnp's; returns a warning or None."""
    ref = np.asarray(fns["jnp"](), np.float32)
    for name, f in fns.items():
        got = np.asarray(f(), np.float32).reshape(ref.shape)
        if not np.allclose(
            got, ref, rtol=2e-2 if op == "avg" else 0, atol=1e-2 if op == "avg" else 0
        ):
            return f"{name} differs from jnp for {op} (max abs diff {np.abs(got - ref).max():.3g})"
    return None


def fmt_ms(v):
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few rounds, short blocks (< 1 minute)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="rounds per (shape, pass); default 30"
    )
    ap.add_argument("--json", type=str, default=None, help="write every measurement here")
    ap.add_argument(
        "--shapes",
        type=parse_shape,
        nargs="+",
        default=None,
        help="B,H,W,C shapes (default: the four ImageNet-style heads)",
    )
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument(
        "--data-format", choices=("channels_last", "channels_first"), default="channels_last"
    )
    ap.add_argument("--passes", choices=PASSES, nargs="+", default=list(PASSES))
    ap.add_argument("--torch-threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suite", choices=("global", "windows"), default="global")
    ap.add_argument(
        "--flax-bf16-backward",
        action="store_true",
        help="also time flax's forward+backward in bfloat16 (very slow)",
    )
    ap.add_argument(
        "--max-call-s",
        type=float,
        default=1.0,
        help="competitors slower than this per call are timed once, not in rounds",
    )
    args = ap.parse_args(argv)

    rounds = args.repeats or (5 if args.quick else 30)
    target = 0.008 if args.quick else 0.020
    shapes = args.shapes or DEFAULT_SHAPES
    dtype = args.dtype
    jdtype = jnp.dtype(dtype)
    rng = np.random.default_rng(args.seed)
    random.seed(args.seed)

    result = {
        "command": [sys.executable, *sys.argv] if argv is None else ["pooling.py", *argv],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "rounds": rounds,
            "block_target_ms": 1e3 * target,
            "dtype": dtype,
            "data_format": args.data_format,
            "torch_threads": args.torch_threads,
            # glibc allocator settings change large-output times 3-5x (README, Speed).
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        },
        "measurements": [],
        "warnings": [],
    }
    if args.suite == "windows":
        print(f"# gapjax windowed pooling benchmark (float32, channels_last, {rounds} rounds)\n")
        print(
            f"machine: {result['machine']['cpu_model']} ({result['machine']['vector_isa']}), "
            f"{os.cpu_count()} CPUs, "
            f"jax {result['versions']['jax']} on {result['machine']['jax_backend']}\n",
            flush=True,
        )
        run_windows_suite(args, result, rounds, target)
        return _finish(result, args)
    source = gapjax_functions()[2]
    result["settings"]["gapjax_source"] = source
    print(f"# gapjax global pooling benchmark ({dtype}, {args.data_format}, {rounds} rounds)\n")
    print(
        f"machine: {result['machine']['cpu_model']} ({result['machine']['vector_isa']}), "
        f"{os.cpu_count()} CPUs, "
        f"jax {result['versions']['jax']} on {result['machine']['jax_backend']}; "
        f"gapjax = {source}\n",
        flush=True,
    )

    rows = {(op, p): [] for op in OPS for p in args.passes}
    for shape in shapes:
        B, _H, _W, C = shape
        x_np = rng.standard_normal(shape, dtype=np.float32)  # (B, H, W, C)
        ct_np = rng.standard_normal((B, C), dtype=np.float32)
        arr = x_np if args.data_format == "channels_last" else x_np.transpose(0, 3, 1, 2)
        x = jnp.asarray(arr, dtype=jdtype)
        ct = jnp.asarray(ct_np, dtype=jdtype)
        yard_x = jnp.asarray(arr, dtype=jdtype) + 0  # a separate buffer of the same size
        yard_ct = jnp.ones((), jnp.float32)
        fwd, _ = jax_competitors(shape, args.data_format, dtype)
        # flax's pooling gradient in bfloat16 takes minutes per call on large maps (0.34 s at
        # 32x7x7x2048, 376 s at 64x56x56x256 on the 2-core test machine): off unless asked.
        skip_bwd = ("flax",) if dtype == "bfloat16" and not args.flax_bf16_backward else ()
        jfns, yard = make_jax_fns(fwd, x, ct, yard_x, yard_ct, skip_bwd)
        tfns, tinfo = torch_competitors(x_np, ct_np, args.data_format, dtype, args.torch_threads)
        if tinfo:
            result["settings"]["torch"] = tinfo
        nbytes = x.size * x.dtype.itemsize
        for p in args.passes:
            fns = {}
            for op in OPS:
                if p == "forward":
                    warning = check_results(jfns[p][op], op)
                    if warning:
                        result["warnings"].append(f"{shape}: {warning}")
                        print("WARNING:", warning)
                for name, f in jfns[p][op].items():
                    fns[f"{op}/{name}"] = f
                if tfns:
                    fns[f"{op}/torch"] = tfns[p][op]
            fns["yardstick"] = yard[p]
            t0 = time.time()
            res = run_rounds(fns, rounds, target, args.max_call_s)
            moved = nbytes * (2 if p == "forward+backward" else 1)
            for key, r in res.items():
                op, name = key.split("/") if "/" in key else ("-", key)
                result["measurements"].append(
                    {
                        "shape_nhwc": list(shape),
                        "array_shape": list(x.shape),
                        "dtype": dtype,
                        "data_format": args.data_format,
                        "pass": p,
                        "op": op,
                        "competitor": name,
                        "bytes": moved,
                        "gb_per_s": moved / (r["median_ms"] * 1e6),
                        **r,
                    }
                )
            for op in OPS:
                g = res[f"{op}/gapjax"]["median_ms"]
                tt = res.get(f"{op}/torch", {}).get("median_ms")
                yd = res["yardstick"]["median_ms"]
                rows[(op, p)].append(
                    {
                        "shape": "x".join(map(str, x.shape)),
                        "gapjax": g,
                        "gbs": moved / (g * 1e6),
                        "jnp": res[f"{op}/jnp"]["median_ms"],
                        "flax": res.get(f"{op}/flax", {}).get("median_ms"),
                        "slow": sorted(
                            k.split("/")[-1]
                            for k, v in res.items()
                            if v["slow"] and k.startswith(f"{op}/")
                        ),
                        "torch": tt,
                        "yard": yd,
                        "yard_gbs": moved / (yd * 1e6),
                        "vs_torch": (tt / g) if tt else None,
                        "of_yard": yd / g,
                    }
                )
            print(f"  {shape} {p}: {time.time() - t0:.1f} s", file=sys.stderr, flush=True)

    for (op, p), rs in rows.items():
        print(
            f"\n## {op} pool, {p} (ms per call, median of {rounds} rounds; * = slower than "
            f"{args.max_call_s} s per call, timed once)\n"
        )
        print(
            "| shape | gapjax | GB/s | jnp | flax | torch | yardstick (GB/s) | vs torch | "
            "of yardstick |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rs:
            vs = "-" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}"

            def ms(name, r=r):
                return fmt_ms(r[name]) + ("*" if name in r["slow"] else "")

            print(
                f"| {r['shape']} | {ms('gapjax')} | {r['gbs']:.1f} | {ms('jnp')} | "
                f"{ms('flax')} | {ms('torch')} | {fmt_ms(r['yard'])} "
                f"({r['yard_gbs']:.1f}) | {vs} | {r['of_yard']:.2f} |"
            )
    result["tables"] = {f"{op}/{p}": rs for (op, p), rs in rows.items()}
    return _finish(result, args)


def _finish(result: dict, args) -> int:
    """Prints the warnings and writes the JSON."""
    if result["warnings"]:
        print("\nWARNINGS:\n" + "\n".join(result["warnings"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
