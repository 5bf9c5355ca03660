"""NIN CIFAR-10 training throughput: gapjax's jitted step against a PyTorch reference.

    python benchmarks/train_throughput.py [--device cpu|cuda|auto] [--out PATH_STEM]
        [--batches 128 512] [--dtypes float32 bfloat16] [--steps N] [--warmup W] [--repeats R]
        [--torch-variants eager compile max-autotune] [--skip-torch] [--quick]
        [--budget-s S] [--profile DIR]

    # on the GPU machine (one command, about 5-8 minutes; see --budget-s):
    python benchmarks/train_throughput.py --device cuda \\
        --out benchmarks/results/train_throughput_h100
    # CPU smoke test (a few minutes on 2 cores):
    python benchmarks/train_throughput.py --quick

What is timed, per (dtype, batch): one full training step on synthetic CIFAR-shaped data that
already lives on the device (a pool of --pool random batches, cycled): on-device augmentation
(zero-pad 4, random 32x32 crop, horizontal flip with probability 1/2, per example), forward,
mean cross-entropy, backward, and Caffe's SGD (momentum 0.9; lr 0.1 weights, 0.2 biases, 0.01 /
0.02 for the last 1x1 convolution; coupled weight decay 1e-4 on weights).

  gapjax  exactly the library's step: configs/nin_cifar10_aug.py's get_config() (batch_size and
          dtype set), gapjax.train.build_model / build_optimizer / make_train_step over a mesh of
          every device, TrainState replicated, batches sharded over the "data" axis. bfloat16 is
          the config's dtype="bfloat16" (bf16 compute, float32 parameters).
  torch   a reference NIN written here from REFERENCE.md section 3 (not from gapjax): the same
          layers, N(0, 0.05^2) init, zero biases, channels_last, SGD with four parameter groups
          (same rates and decay), augmentation with torch ops on the same device (one gather per
          batch). Variants: "eager"; "compile" (torch.compile, default mode, on the augmentation +
          forward + loss, plus a compiled optimizer step); "max-autotune" (the same with
          mode="max-autotune-no-cudagraphs"; CUDA only, by default only at --autotune-batches).
          bfloat16 = torch.autocast (AMP: bf16 compute, float32 parameters).

Methodology: the first call is timed on its own ("compile s": tracing + compilation + one step;
for eager torch just the first step), then --warmup steps, then --repeats blocks of --steps
steps, each block ended by one device synchronization (jax.block_until_ready on the state, or
torch.cuda.synchronize); images/s = median over the blocks. Nothing leaves the device inside a
block. float32 rows use each framework's default matmul/conv precision (on Ampere and Hopper
both use TF32 for float32 convolutions by default: JAX's "default" precision and
torch.backends.cudnn.allow_tf32=True); torch.backends.cudnn.benchmark is on (XLA autotunes its
convolutions at compile time; --no-cudnn-benchmark turns it off).

Correctness guard (before timing, unless --skip-check or torch is missing): the gapjax model's
initial weights are copied into the torch NIN (kernels (kh, kw, in, out) -> (out, in, kh, kw));
both run two training steps on the same batch in float32 at full precision (no TF32), with no
augmentation and dropout off (the library's step built from the model in eval mode;
torch.nn.Module.eval()). Reported: the relative difference of the logits at init, of the two
losses (the second one is after an SGD update), and of the parameter updates after both steps,
also against the torch NIN run in float64. Logits and losses should agree to about 1e-4 or
better. The lower layers' updates are ill-conditioned at this init (tiny gradients from large
cancelling sums): any two float32 implementations differ there by ~1e-3 to 1e-2, so gapjax's
distance from the float64 reference is judged against torch float32's own distance from it.

Derived targets (reported, not asserted): 260 epochs x 50,000 images at each gapjax rate in
minutes; whether it reaches 22,000 images/s; whether gapjax is >= 1.3x the best torch variant at
batch 128 (per dtype).

--profile DIR: after timing, each gapjax configuration runs 5 more steps inside
jax.profiler.trace(DIR/gapjax_b<batch>_<dtype>) (open with TensorBoard's profile plugin or
Perfetto) and its optimized HLO is written to DIR/gapjax_b<batch>_<dtype>.hlo.txt. For XLA's full
per-pass dumps the script re-executes itself once with
XLA_FLAGS="--xla_dump_to=DIR/xla --xla_dump_hlo_module_re=.*step.*" added (skipped when XLA_FLAGS
already names --xla_dump_to); the flag has to be set before JAX starts, hence the re-exec.

Order and time: the correctness guard, every gapjax row, every eager torch row, then the
compiled torch rows batch by batch (in --batches order). On a GPU --budget-s (default 420 s)
keeps one run under 10 minutes: compiled torch rows that would start later are skipped and
listed as such (max-autotune rows need 150 s of the budget left, their compilation takes
minutes). JAX runs on its default backend whatever --device says (JAX_PLATFORMS=cpu moves it).

On a GPU the script caps JAX's preallocation at half of the GPU memory
(XLA_CLIENT_MEM_FRACTION=0.5, unless the environment sets it) so that PyTorch, in the same
process, has room.

Output: a markdown table on stdout and in PATH_STEM.md, everything in PATH_STEM.json (default
benchmarks/results/train_throughput_<platform>, platform = JAX's default backend).
"""

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:
    import configs.nin_cifar10_aug
except ImportError:  # run from a checkout: the repository root holds gapjax and configs/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import configs.nin_cifar10_aug

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from gapjax.models import nin
from gapjax.train import TrainState, build_model, build_optimizer, make_mesh, make_train_step

ROOT = Path(__file__).resolve().parents[1]
NIN_PARAMS = 966_986  # REFERENCE.md section 3
EPOCHS, TRAIN_IMAGES = 260, 50_000
TARGET_IMAGES_PER_S = 22_000
TARGET_RATIO = 1.3
TORCH_VARIANTS = ("eager", "compile", "max-autotune")
TORCH_MODES = {"compile": None, "max-autotune": "max-autotune-no-cudagraphs"}
AUTOTUNE_RESERVE_S = 150.0  # a max-autotune row starts only this long before --budget-s
DEFAULT_GPU_BUDGET_S = 420.0  # one run, compilation included, well inside 10 minutes
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
YARDSTICK_N = 2048  # the jnp.dot yardstick: (N, N) @ (N, N)
YARDSTICK_TARGET = 0.7  # the step's GFLOP/s over the yardstick's (issue 18's CPU goal)


# --------------------------------------------------------------------------------------------
# Shared pieces.
# --------------------------------------------------------------------------------------------


def synthetic_batches(batch: int, pool: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``pool`` random CIFAR-shaped batches: images (pool, batch, 32, 32, 3) float32 N(0, 1)
    (about the scale of GCN + ZCA data) and labels (pool, batch) int32."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((pool, batch, *IMAGE_SHAPE), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, (pool, batch), dtype=np.int32)
    return images, labels


def _time_loop(step, sync, *, steps: int, warmup: int, repeats: int) -> tuple[float, list]:
    """(first call s, [seconds of each block of ``steps`` steps]); ``sync`` waits for the
    device once per block (and after the first call and the warm-up)."""
    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    for _ in range(warmup):
        step()
    sync()
    blocks = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        blocks.append(time.perf_counter() - t)
    return first, blocks


def _rates(batch: int, steps: int, blocks: list) -> dict:
    rates = [batch * steps / b for b in blocks]
    med = statistics.median(rates)
    return {
        "images_per_s": med,
        "step_ms": 1e3 * batch / med,
        "repeats_images_per_s": [round(r, 1) for r in rates],
    }


def step_flops(batch: int) -> float:
    """Floating-point operations of one training step, from the convolutions alone (the pools,
    ReLUs, loss and optimizer add < 1%): 2 x MACs for the forward pass, twice that for the
    backward pass (input and weight gradients), less the first layer's input gradient, which
    neither framework computes."""
    side = [IMAGE_SHAPE[0], 16, 8]  # 32 -> 16 -> 8 (Caffe-rounded 3x3/2 pools)
    total, cin = 0.0, IMAGE_SHAPE[-1]
    for b, (k, widths) in enumerate(TORCH_BLOCKS):
        for j, cout in enumerate(widths):
            size = k if j == 0 else 1
            fwd = 2.0 * batch * side[b] ** 2 * size * size * cin * cout
            total += fwd * (2 if (b, j) == (0, 0) else 3)
            cin = cout
    return total


def measure_dot_yardstick(dtype: str = "float32", *, n: int = YARDSTICK_N, repeats: int = 7):
    """GFLOP/s of a jitted (n, n) @ (n, n) ``jnp.dot`` on JAX's default device: what this
    machine's matrix products reach, timed in the same run as the training steps (median)."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.dtype(dtype))
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"dtype": dtype, "n": n, "ms": 1e3 * med, "gflop_per_s": 2.0 * n**3 / med / 1e9}


def _yardstick_runner(dtype: str, n: int = YARDSTICK_N):
    """``measure_dot_yardstick`` as a runner for ``measure_interleaved`` (a block of ``steps``
    products per round, the median block reported)."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.dtype(dtype))
    dot = jax.jit(jnp.dot)
    box = {"out": None}

    def one_step():
        box["out"] = dot(a, b)

    def sync():
        jax.block_until_ready(box["out"])

    def finish(first, blocks, *, steps, warmup, repeats, error=None) -> dict:
        if error is not None:
            raise error
        med = statistics.median(blocks) / steps
        return {
            "implementation": "yardstick",
            "dtype": dtype,
            "n": n,
            "ms": 1e3 * med,
            "gflop_per_s": 2.0 * n**3 / med / 1e9,
            "blocks_s": blocks,
        }

    return one_step, sync, finish


def _error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) < 600 else text[:600] + " ..."


# --------------------------------------------------------------------------------------------
# gapjax.
# --------------------------------------------------------------------------------------------


def gapjax_config(batch: int, dtype: str, *, augment: bool = True):
    """configs/nin_cifar10_aug.py's config with the benchmark's batch size and dtype."""
    config = configs.nin_cifar10_aug.get_config()
    config.batch_size = batch
    config.dtype = dtype
    config.augment = augment
    return config


def _gapjax_setup(batch: int, dtype: str, *, augment: bool = True, train_mode: bool = True):
    """(model, step, state, mesh, config): the library's pieces, the state on the devices."""
    config = gapjax_config(batch, dtype, augment=augment)
    mesh = make_mesh()
    if batch % mesh.devices.size:
        raise ValueError(f"batch {batch} must be a multiple of the {mesh.devices.size} devices")
    model = build_model(config)
    count = nin.param_count(model)
    assert count == NIN_PARAMS, f"gapjax NIN has {count} parameters, expected {NIN_PARAMS}"
    if train_mode:
        model.train()
    else:
        model.eval()  # dropout off (the correctness guard)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    _, tx = build_optimizer(config, params, model, max(1, TRAIN_IMAGES // batch))
    replicated = NamedSharding(mesh, PartitionSpec())
    state = TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))
    state = jax.device_put(state, replicated)
    step = make_train_step(graphdef, tx, config, NamedSharding(mesh, PartitionSpec("data")))
    return model, step, state, mesh, config


def _totals(mesh):
    zeros = {k: jnp.zeros((), jnp.float32) for k in ("loss", "correct", "count")}
    return jax.device_put(zeros, NamedSharding(mesh, PartitionSpec()))


def _device_batches(mesh, images: np.ndarray, labels: np.ndarray) -> list:
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return [
        jax.device_put({"images": images[i], "labels": labels[i]}, sharding)
        for i in range(len(images))
    ]


def measure_gapjax(
    batch: int,
    dtype: str = "float32",
    *,
    steps: int,
    warmup: int,
    repeats: int = 1,
    pool: int = 4,
    seed: int = 0,
    profile_dir: str | None = None,
) -> dict:
    """Images/s of the library's training step (configs/nin_cifar10_aug.py) at one batch size
    and dtype; the first call (compilation) is timed separately.

    Returns:
      A row: implementation, variant, dtype, batch, compile_s, images_per_s, step_ms,
      repeats_images_per_s, mean training loss over every step run, status.
    """
    one_step, sync, finish = gapjax_runner(batch, dtype, pool=pool, seed=seed)
    first, blocks = _time_loop(one_step, sync, steps=steps, warmup=warmup, repeats=repeats)
    return finish(
        first, blocks, steps=steps, warmup=warmup, repeats=repeats, profile_dir=profile_dir
    )


def gapjax_runner(batch: int, dtype: str = "float32", *, pool: int = 4, seed: int = 0):
    """(one_step, sync, finish): the library's step on device-resident batches, a wait for the
    device, and ``finish(first, blocks, ...)`` that makes the row from the timings."""
    _, step, state, mesh, _ = _gapjax_setup(batch, dtype)
    images, labels = synthetic_batches(batch, pool, seed)
    batches = _device_batches(mesh, images, labels)
    key = jax.random.key(seed)
    box = {"state": state, "totals": _totals(mesh), "i": 0}

    def one_step():
        b = batches[box["i"] % len(batches)]
        box["state"], box["totals"] = step(box["state"], box["totals"], b, key)
        box["i"] += 1

    def sync():
        jax.block_until_ready((box["state"], box["totals"]))

    def finish(first, blocks, *, steps, warmup, repeats, profile_dir=None, error=None) -> dict:
        if error is not None:
            raise error
        totals = jax.device_get(box["totals"])
        row = {
            "implementation": "gapjax",
            "variant": "jit",
            "dtype": dtype,
            "batch": batch,
            "status": "ok",
            "compile_s": first,
            **_rates(batch, steps, blocks),
            "steps": steps,
            "warmup": warmup,
            "repeats": repeats,
            "mean_loss": float(totals["loss"]) / max(float(totals["count"]), 1.0),
        }
        if profile_dir:
            row["profile"] = _profile_gapjax(
                step, box, batches, key, sync, profile_dir, batch, dtype
            )
        return row

    return one_step, sync, finish


def _profile_gapjax(step, box, batches, key, sync, profile_dir, batch, dtype) -> dict:
    """Five more steps under jax.profiler.trace, and the step's optimized HLO as text."""
    name = f"gapjax_b{batch}_{dtype}"
    out = Path(profile_dir)
    out.mkdir(parents=True, exist_ok=True)
    hlo = out / f"{name}.hlo.txt"
    lowered = step.lower(box["state"], box["totals"], batches[0], key)
    hlo.write_text(lowered.compile().as_text())
    trace_dir = out / name
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(5):
            box["state"], box["totals"] = step(box["state"], box["totals"], batches[0], key)
        sync()
    return {"trace_dir": str(trace_dir), "hlo": str(hlo)}


# --------------------------------------------------------------------------------------------
# PyTorch reference.
# --------------------------------------------------------------------------------------------


def import_torch():
    """(torch, None) or (None, why not)."""
    try:
        import torch
    except ImportError as e:
        return None, f"torch not installed ({e})"
    return torch, None


# (kernel, widths) of each mlpconv block and the pool after it: REFERENCE.md section 3.
TORCH_BLOCKS = ((5, (192, 160, 96)), (5, (192, 192, 192)), (3, (192, 192, 10)))


def build_torch_nin(torch, *, seed: int = 0):
    """The reference NIN for CIFAR-10 as a torch.nn.Sequential, from REFERENCE.md (not gapjax):
    ReLU after every convolution (the last one too), 3x3/2 max pools with ceil rounding and
    dropout 0.5 between the blocks, global average pooling; N(0, 0.05^2) weights, zero biases.
    """
    nn = torch.nn
    gen = torch.Generator().manual_seed(seed)
    layers, cin = [], IMAGE_SHAPE[-1]
    for b, (k, widths) in enumerate(TORCH_BLOCKS):
        for j, cout in enumerate(widths):
            size = k if j == 0 else 1
            conv = nn.Conv2d(cin, cout, size, padding=size // 2)
            with torch.no_grad():
                conv.weight.normal_(0.0, 0.05, generator=gen)
                conv.bias.zero_()
            layers += [conv, nn.ReLU(inplace=True)]
            cin = cout
        if b < len(TORCH_BLOCKS) - 1:
            layers += [nn.MaxPool2d(3, 2, ceil_mode=True), nn.Dropout(0.5)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def torch_convs(model) -> list:
    return [m for m in model if type(m).__name__ == "Conv2d"]


def torch_param_groups(model, config) -> list:
    """Caffe's rates as four SGD parameter groups: weights, biases (x bias_lr_mult, no decay),
    and the same for the last convolution (x last_layer_lr_mult)."""
    convs = torch_convs(model)
    lr, wd = config.lr, config.weight_decay
    bias, last = config.bias_lr_mult, config.last_layer_lr_mult
    return [
        {"params": [c.weight for c in convs[:-1]], "lr": lr, "weight_decay": wd},
        {"params": [c.bias for c in convs[:-1]], "lr": lr * bias, "weight_decay": 0.0},
        {"params": [convs[-1].weight], "lr": lr * last, "weight_decay": wd},
        {"params": [convs[-1].bias], "lr": lr * bias * last, "weight_decay": 0.0},
    ]


def torch_crop_flip(torch, x_nhwc, *, padding: int = 4, flip_prob: float = 0.5):
    """Zero-pad, random crop (uniform over the 2p + 1 offsets per axis) and random horizontal
    flip per example, as one gather; returns an NCHW view with channels_last strides."""
    n, h, w, _ = x_nhwc.shape
    dev = x_nhwc.device
    padded = torch.nn.functional.pad(x_nhwc, (0, 0, padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), device=dev)
    flips = torch.rand(n, device=dev) < flip_prob
    r = torch.arange(h, device=dev)
    c = torch.arange(w, device=dev)
    rows = offsets[:, :1] + r  # (n, h)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - c, c)  # (n, w)
    out = padded[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def _torch_device(torch, requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    return requested


def _torch_sync(torch, device: str):
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def measure_torch(
    torch,
    variant: str,
    batch: int,
    dtype: str = "float32",
    *,
    device: str,
    steps: int,
    warmup: int,
    repeats: int = 1,
    pool: int = 4,
    seed: int = 0,
) -> dict:
    """Images/s of the reference NIN's training step in one torch variant (eager, compile,
    max-autotune); a failure (e.g. torch.compile unavailable) returns a "failed" row."""
    torch._dynamo.reset()
    one_step, sync, finish = torch_runner(
        torch, variant, batch, dtype, device=device, pool=pool, seed=seed
    )
    try:
        first, blocks = _time_loop(one_step, sync, steps=steps, warmup=warmup, repeats=repeats)
    except Exception as e:  # torch.compile missing a compiler, an unsupported op, ...
        torch._dynamo.reset()
        return finish(None, None, steps=steps, warmup=warmup, repeats=repeats, error=e)
    row = finish(first, blocks, steps=steps, warmup=warmup, repeats=repeats)
    torch._dynamo.reset()
    return row


def torch_runner(
    torch, variant: str, batch: int, dtype: str = "float32", *, device: str, pool=4, seed=0
):
    """(one_step, sync, finish) of the reference NIN's training step, as ``gapjax_runner``."""
    row = {
        "implementation": "torch",
        "variant": variant,
        "dtype": dtype,
        "batch": batch,
        "device": device,
    }
    F = torch.nn.functional
    torch.manual_seed(seed)
    model = build_torch_nin(torch, seed=seed).to(device, memory_format=torch.channels_last)
    count = sum(p.numel() for p in model.parameters())
    assert count == NIN_PARAMS, f"torch NIN has {count} parameters, expected {NIN_PARAMS}"
    model.train()
    config = gapjax_config(batch, dtype)  # the same solver settings
    opt = torch.optim.SGD(torch_param_groups(model, config), momentum=config.momentum)
    images, labels = synthetic_batches(batch, pool, seed)
    xs = [torch.from_numpy(images[i]).to(device) for i in range(pool)]  # NHWC, on the device
    ys = [torch.from_numpy(labels[i]).long().to(device) for i in range(pool)]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    bf16 = dtype == "bfloat16"

    def forward(x, y):
        x = torch_crop_flip(torch, x)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        correct = (logits.argmax(-1) == y).sum()
        return loss, correct

    def opt_step():
        opt.step()

    if variant != "eager":
        forward = torch.compile(forward, mode=TORCH_MODES[variant], dynamic=False)
        opt_step = torch.compile(opt_step, dynamic=False)
    totals = torch.zeros(2, device=device)
    box = {"i": 0}

    def one_step():
        i = box["i"] % pool
        loss, correct = forward(xs[i], ys[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt_step()
        totals.add_(torch.stack([loss.detach() * batch, correct.float()]))
        box["i"] += 1

    def finish(first, blocks, *, steps, warmup, repeats, error=None) -> dict:
        if error is not None:
            return {**row, "status": "failed", "error": _error(error)}
        return {
            **row,
            "status": "ok",
            "compile_s": first,
            **_rates(batch, steps, blocks),
            "steps": steps,
            "warmup": warmup,
            "repeats": repeats,
            "mean_loss": float(totals[0]) / (box["i"] * batch),
        }

    return one_step, _torch_sync(torch, device), finish


def measure_interleaved(runners: list, *, steps: int, warmup: int, repeats: int) -> list:
    """Rows of several (label, one_step, sync, finish, pause) runners timed in interleaved
    rounds: each runner's first call and warm-up, then ``repeats`` rounds of one block of
    ``steps`` steps per runner, so that a machine whose speed drifts (other work on it) slows
    every competitor alike. ``pause`` seconds of sleep follow a runner's block (PyTorch's
    OpenMP workers spin on the cores for a while after a call)."""
    firsts, blocks, failed = {}, {r[0]: [] for r in runners}, {}
    for label, one_step, sync, _, pause in runners:
        print(f"{label}: first call and warm-up ...", flush=True)
        try:
            t = time.perf_counter()
            one_step()
            sync()
            firsts[label] = time.perf_counter() - t
            for _ in range(warmup):
                one_step()
            sync()
        except Exception as e:  # torch.compile without a compiler, ...
            failed[label] = e
        time.sleep(pause)
    for r in range(repeats):
        for label, one_step, sync, _, pause in runners:
            if label in failed:
                continue
            t = time.perf_counter()
            for _ in range(steps):
                one_step()
            sync()
            blocks[label].append(time.perf_counter() - t)
            time.sleep(pause)
        print(f"round {r + 1}/{repeats} done", flush=True)
    rows = []
    for label, _, _, finish, _ in runners:
        kw = {"steps": steps, "warmup": warmup, "repeats": repeats}
        if label in failed:
            rows.append(finish(None, None, **kw, error=failed[label]))
        else:
            rows.append(finish(firsts[label], blocks[label], **kw))
    return rows


# --------------------------------------------------------------------------------------------
# Correctness guard.
# --------------------------------------------------------------------------------------------


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _gapjax_layers(model) -> list:
    """[(kernel (kh, kw, in, out), bias)] of every convolution, in order, as NumPy arrays."""
    return [
        (np.array(layer.kernel[...], np.float64), np.array(layer.bias[...], np.float64))
        for block in model.blocks
        for layer in block.layers
    ]


def copy_gapjax_to_torch(torch, gapjax_model, torch_model) -> None:
    """Loads the gapjax NIN's weights into the torch NIN (NHWC kernels -> OIHW)."""
    layers, convs = _gapjax_layers(gapjax_model), torch_convs(torch_model)
    assert len(layers) == len(convs), (len(layers), len(convs))
    with torch.no_grad():
        for (kernel, bias), conv in zip(layers, convs, strict=True):
            w = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            assert tuple(w.shape) == tuple(conv.weight.shape), (w.shape, conv.weight.shape)
            conv.weight.copy_(w)
            conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))


@contextlib.contextmanager
def _torch_full_precision(torch):
    """float32 convolutions and matmuls without TF32, and no cuDNN autotuning, for a while."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, cudnn.benchmark, matmul.allow_tf32)
    cudnn.allow_tf32, cudnn.benchmark, matmul.allow_tf32 = False, False, False
    try:
        yield
    finally:
        cudnn.allow_tf32, cudnn.benchmark, matmul.allow_tf32 = saved


def _torch_layers(model) -> list:
    """[(kernel (kh, kw, in, out), bias)] of the torch NIN's convolutions, float64 NumPy."""
    return [
        (
            c.weight.detach().cpu().double().permute(2, 3, 1, 0).numpy(),
            c.bias.detach().cpu().double().numpy(),
        )
        for c in torch_convs(model)
    ]


def _update_diff(after, reference, before) -> float:
    """Max over tensors of the relative difference of the updates (after - before)."""
    return max(
        _rel(a - b0, r - b0)
        for layer_a, layer_r, layer_0 in zip(after, reference, before, strict=True)
        for a, r, b0 in zip(layer_a, layer_r, layer_0, strict=True)
    )


def check_against_torch(
    torch,
    *,
    batch: int = 32,
    device: str = "cpu",
    steps: int = 2,
    seed: int = 0,
    float64_reference: bool = True,
) -> dict:
    """gapjax vs the torch reference from the same weights on the same batch, float32, full
    precision, no augmentation, dropout off: logits at init, the loss of each of ``steps``
    training steps, and the parameter updates after them.

    With ``float64_reference``, the torch NIN also runs in float64: the updates of the lower
    layers are ill-conditioned at this init (tiny gradients from large cancelling sums, ~1e-3
    apart between any two float32 implementations), so each float32 implementation's distance
    from float64 says more than their distance from each other.

    Returns:
      A dict with the relative differences (``loss_max_rel_diff`` should be ~1e-4 or less).
    """
    model, step, state, mesh, config = _gapjax_setup(
        batch, "float32", augment=False, train_mode=False
    )
    images, labels = synthetic_batches(batch, 1, seed + 1)
    jbatch = _device_batches(mesh, images, labels)[0]
    key = jax.random.key(seed)
    before = _gapjax_layers(model)

    def torch_copy(dtype):
        m = build_torch_nin(torch, seed=seed)
        copy_gapjax_to_torch(torch, model, m)
        m = m.to(device, dtype=dtype, memory_format=torch.channels_last)
        m.eval()  # dropout off, as the gapjax model in eval mode
        opt = torch.optim.SGD(torch_param_groups(m, config), momentum=config.momentum)
        return m, opt

    tmodels = {"float32": torch_copy(torch.float32)}
    if float64_reference:
        tmodels["float64"] = torch_copy(torch.float64)
    x = torch.from_numpy(images[0]).to(device).permute(0, 3, 1, 2)  # channels_last view
    y = torch.from_numpy(labels[0]).long().to(device)

    losses = {"gapjax": [], "float32": [], "float64": []}
    with jax.default_matmul_precision("highest"), _torch_full_precision(torch):
        logits_j = np.asarray(model(jbatch["images"]))
        with torch.no_grad():
            logits_t = tmodels["float32"][0](x).cpu().numpy()
        for _ in range(steps):
            state, totals = step(state, _totals(mesh), jbatch, key)
            losses["gapjax"].append(float(totals["loss"]) / float(totals["count"]))
            for name, (m, opt) in tmodels.items():
                loss = torch.nn.functional.cross_entropy(m(x.to(m[0].weight.dtype)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses[name].append(loss.item())
    graphdef = nnx.split(model, nnx.Param, ...)[0]
    after_j = _gapjax_layers(nnx.merge(graphdef, state.params, state.rest))
    after = {name: _torch_layers(m) for name, (m, _) in tmodels.items()}
    loss_diff = max(_rel(a, b) for a, b in zip(losses["gapjax"], losses["float32"], strict=True))
    out = {
        "batch": batch,
        "torch_device": device,
        "steps": steps,
        "precision": "float32, JAX 'highest', torch TF32 off",
        "logits_max_abs": float(np.max(np.abs(logits_t))),
        "logits_max_rel_diff": _rel(logits_j, logits_t),
        "loss_gapjax": losses["gapjax"],
        "loss_torch": losses["float32"],
        "loss_max_rel_diff": loss_diff,
        "loss_agrees_1e-4": loss_diff <= 1e-4,
        "update_max_rel_diff": _update_diff(after_j, after["float32"], before),
    }
    if float64_reference:
        out.update(
            loss_torch_float64=losses["float64"],
            update_max_rel_diff_gapjax_vs_float64=_update_diff(after_j, after["float64"], before),
            update_max_rel_diff_torch_vs_float64=_update_diff(
                after["float32"], after["float64"], before
            ),
        )
    return out


# --------------------------------------------------------------------------------------------
# Environment.
# --------------------------------------------------------------------------------------------


def versions(torch=None) -> dict:
    out = {"python": platform.python_version()}
    for mod in ("jax", "jaxlib", "flax", "optax", "numpy", "gapjax"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except (ImportError, AttributeError):
            out[mod] = None
    out["torch"] = torch.__version__ if torch is not None else None
    if torch is not None:
        out["torch_cuda"] = torch.version.cuda
        try:
            out["torch_cudnn"] = torch.backends.cudnn.version()
        except Exception:  # no cuDNN in a CPU build
            out["torch_cudnn"] = None
    wanted = ("jax-cuda", "jax_cuda", "nvidia-cudnn", "nvidia-cuda-runtime", "nvidia-cublas")
    out["cuda_packages"] = {
        d.metadata["Name"]: d.version
        for d in importlib.metadata.distributions()
        if d.metadata["Name"] and d.metadata["Name"].lower().startswith(wanted)
    }
    return out


def machine(torch=None, torch_device: str | None = None) -> dict:
    dev = jax.devices()[0]
    out = {
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_device_kind": dev.device_kind,
        "torch_device": torch_device,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        **cpu_info(),
    }
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        if torch_device and torch_device.startswith("cuda"):
            out["torch_device_name"] = torch.cuda.get_device_name()
    try:
        out["nvidia_smi"] = (
            subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["nvidia_smi"] = None
    return out


def cpu_info() -> dict:
    """The CPU's model name, family/model numbers and widest vector ISA (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        first[key.strip()] = value.strip()
    flags = set(first.get("flags", "").split())
    isa = next(
        (
            name
            for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
            if flag in flags
        ),
        "SSE",
    )
    return {
        "cpu_model": first.get("model name"),
        "cpu_family": first.get("cpu family"),
        "cpu_model_number": first.get("model"),
        "vector_isa": isa + (" (bf16)" if "avx512_bf16" in flags else ""),
    }


def numerics(torch=None) -> dict:
    out = {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision}
    if torch is not None:
        out.update(
            torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            torch_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            torch_cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    out["env"] = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("XLA_", "JAX_", "CUDA_VISIBLE", "TORCH", "OMP_", "NVIDIA_TF32"))
    }
    return out


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------


def add_ratios(rows: list) -> None:
    """gapjax / torch ratios per (dtype, batch): on the gapjax row against the best torch
    variant, on each torch row against that row."""
    for r in rows:
        if r["status"] != "ok":
            continue
        same = [
            o
            for o in rows
            if o["status"] == "ok" and o["dtype"] == r["dtype"] and o["batch"] == r["batch"]
        ]
        g = next((o for o in same if o["implementation"] == "gapjax"), None)
        torches = [o for o in same if o["implementation"] == "torch"]
        if r["implementation"] == "gapjax" and torches:
            best = max(torches, key=lambda o: o["images_per_s"])
            r["best_torch"] = best["variant"]
            r["ratio_vs_best_torch"] = r["images_per_s"] / best["images_per_s"]
        elif r["implementation"] == "torch" and g is not None:
            r["ratio_gapjax_over_this"] = g["images_per_s"] / r["images_per_s"]


def add_flops(rows: list, yardsticks: dict) -> None:
    """GFLOP/s of every timed row (``step_flops``), and the gapjax rows' share of the jnp.dot
    yardstick of their dtype."""
    for r in rows:
        if r["status"] != "ok":
            continue
        r["gflop_per_s"] = step_flops(r["batch"]) * r["images_per_s"] / r["batch"] / 1e9
        y = yardsticks.get(r["dtype"])
        if r["implementation"] == "gapjax" and y:
            r["fraction_of_dot"] = r["gflop_per_s"] / y["gflop_per_s"]


def targets(rows: list) -> list:
    out = []
    for r in rows:
        if r["implementation"] != "gapjax" or r["status"] != "ok":
            continue
        t = {
            "dtype": r["dtype"],
            "batch": r["batch"],
            "images_per_s": r["images_per_s"],
            "minutes_260_epochs": EPOCHS * TRAIN_IMAGES / r["images_per_s"] / 60,
            "meets_22000_images_per_s": r["images_per_s"] >= TARGET_IMAGES_PER_S,
            "gflop_per_s": r.get("gflop_per_s"),
            "fraction_of_dot": r.get("fraction_of_dot"),
            "ratio_vs_best_torch_any_batch": r.get("ratio_vs_best_torch"),
        }
        if r["batch"] == 128:
            ratio = r.get("ratio_vs_best_torch")
            t["ratio_vs_best_torch"] = ratio
            t["best_torch"] = r.get("best_torch")
            t["meets_1.3x_best_torch"] = None if ratio is None else ratio >= TARGET_RATIO
        out.append(t)
    return out


def _load(v) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    m, v = result["machine"], result["versions"]
    lines = [
        "# NIN CIFAR-10 training throughput: gapjax vs PyTorch",
        "",
        f"JAX on {m['jax_backend']} ({m['jax_device_kind']}, {len(m['jax_devices'])} device(s)); "
        f"torch on {m['torch_device'] or '-'}"
        + (f" ({m['torch_device_name']})" if m.get("torch_device_name") else "")
        + f"; {m['processor']}, {m['cpu_count']} CPUs"
        + (
            f" ({m['cpu_model']}, family {m['cpu_family']} model {m['cpu_model_number']}, "
            f"{m['vector_isa']})"
            if m.get("cpu_model")
            else ""
        )
        + ".",
        "",
        f"python {v['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, "
        f"optax {v['optax']}, torch {v['torch']}"
        + (f" (CUDA {v['torch_cuda']}, cuDNN {v['torch_cudnn']})" if v.get("torch_cuda") else "")
        + f"; {result['date']}.",
        "",
        f"Command: `{' '.join(result['command'])}`",
        "",
    ]
    if m["jax_backend"] == "cpu":
        lines += [
            "**CPU numbers are a smoke test only**: they show that the benchmark runs end to end;"
            " absolute times count only on the GPU machine. Load average (1, 5, 15 min) at the "
            f"start {_load(m.get('load_average_at_start'))}, at the end "
            f"{_load(m.get('load_average_at_end'))} (other work on a shared machine skews them).",
            "",
        ]
    s = result["settings"]
    lines += [
        f"Steady state over {s['steps']} steps after {s['warmup']} warm-up steps, median of "
        f"{s['repeats']} block(s); synthetic data on the device; on-device pad-4 crop + flip; "
        "SGD momentum. compile s = the first call (tracing + compilation + one step; eager "
        "torch: the first step). gapjax/torch: gapjax images/s over this row's (on the gapjax "
        "row: over the best torch variant at that dtype and batch)."
        + (
            " Every configuration (and the yardstick) was timed in interleaved rounds: one "
            "block of each per round, median block reported."
            if s.get("interleave")
            else ""
        ),
        "",
        "| implementation | variant | dtype | batch | compile s | images/s | ms/step | "
        "GFLOP/s | gapjax/torch | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        if r["status"] == "ok":
            ratio = r.get("ratio_vs_best_torch", r.get("ratio_gapjax_over_this"))
            note = f"vs {r['best_torch']}" if r.get("best_torch") else ""
            lines.append(
                f"| {r['implementation']} | {r['variant']} | {r['dtype']} | {r['batch']} | "
                f"{r['compile_s']:.1f} | {r['images_per_s']:,.0f} | {r['step_ms']:.2f} | "
                f"{_f(r.get('gflop_per_s'), '.1f')} | {_f(ratio, '.2f')} | {note} |"
            )
        else:
            why = r.get("error") or r.get("reason", "")
            why = why.replace("|", "/").replace("\n", " ")[:160]
            lines.append(
                f"| {r['implementation']} | {r['variant']} | {r['dtype']} | {r['batch']} | - | - "
                f"| - | - | - | {r['status']}: {why} |"
            )
    for y in result.get("yardsticks", {}).values():
        lines += [
            "",
            f"Yardstick, same run: jitted `jnp.dot` of two ({y['n']}, {y['n']}) {y['dtype']} "
            f"matrices, {y['ms']:.1f} ms = {y['gflop_per_s']:.1f} GFLOP/s (median). Step "
            f"GFLOP/s count the convolutions' FLOPs only (forward, and both gradients but the "
            f"first layer's input gradient): {step_flops(1) / 1e9:.3f} GFLOP per image, "
            f"counted as direct convolutions (on CPU gapjax runs conv2 and conv3 as Winograd, "
            f"with fewer multiplications: an effective rate).",
        ]
    lines += ["", "## Targets (reported, not asserted)", ""]
    for t in result["targets"]:
        line = (
            f"- gapjax {t['dtype']} batch {t['batch']}: {t['images_per_s']:,.0f} images/s; "
            f"{EPOCHS} epochs x {TRAIN_IMAGES:,} images at this rate = "
            f"{t['minutes_260_epochs']:,.1f} minutes; >= {TARGET_IMAGES_PER_S:,} images/s: "
            f"{'yes' if t['meets_22000_images_per_s'] else 'no'}"
        )
        if t.get("fraction_of_dot") is not None:
            line += (
                f"; {t['gflop_per_s']:.1f} GFLOP/s = {t['fraction_of_dot']:.2f} of the jnp.dot "
                f"yardstick (>= {YARDSTICK_TARGET}: "
                f"{'yes' if t['fraction_of_dot'] >= YARDSTICK_TARGET else 'no'})"
            )
        if t.get("ratio_vs_best_torch_any_batch") is not None:
            line += f"; {t['ratio_vs_best_torch_any_batch']:.2f}x best torch at this batch"
        if "ratio_vs_best_torch" in t:
            if t["ratio_vs_best_torch"] is None:
                line += f"; >= {TARGET_RATIO}x best torch: n/a (no torch row)"
            else:
                line += (
                    f"; {t['ratio_vs_best_torch']:.2f}x best torch ({t['best_torch']}): "
                    f">= {TARGET_RATIO}x {'yes' if t['meets_1.3x_best_torch'] else 'no'}"
                )
        lines.append(line)
    c = result.get("check")
    lines += ["", "## Correctness guard (same weights, same batch, float32, no dropout/aug)", ""]
    if not c:
        lines.append("- not run")
    elif "error" in c:
        lines.append(f"- {c['error']}")
    else:
        lines += [
            f"- batch {c['batch']}, {c['steps']} SGD steps, {c['precision']}",
            f"- logits at init: max rel diff {c['logits_max_rel_diff']:.2e} "
            f"(max |logit| {c['logits_max_abs']:.3g})",
            f"- losses gapjax {', '.join(f'{x:.6f}' for x in c['loss_gapjax'])}; torch "
            f"{', '.join(f'{x:.6f}' for x in c['loss_torch'])}; max rel diff "
            f"{c['loss_max_rel_diff']:.2e} ({'OK' if c['loss_agrees_1e-4'] else 'MISMATCH'} "
            "at 1e-4)",
            f"- parameter updates: max rel diff {c['update_max_rel_diff']:.2e}"
            + (
                f"; from a float64 torch reference: gapjax "
                f"{c['update_max_rel_diff_gapjax_vs_float64']:.2e}, torch float32 "
                f"{c['update_max_rel_diff_torch_vs_float64']:.2e} (the lower layers' updates "
                "are ill-conditioned at this init: judge gapjax against torch float32's own "
                "distance from float64)"
                if "update_max_rel_diff_gapjax_vs_float64" in c
                else ""
            ),
        ]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help="torch's device (JAX uses its default backend)",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="output path stem (writes .json and .md); default "
        "benchmarks/results/train_throughput_<platform>",
    )
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default 128 512")
    ap.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (50 GPU / 5 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (5 GPU / 2 CPU)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed blocks of --steps steps, median reported (3 GPU / 1 CPU)",
    )
    ap.add_argument("--pool", type=int, default=4, help="distinct device-resident batches")
    ap.add_argument(
        "--torch-variants",
        nargs="+",
        choices=TORCH_VARIANTS,
        default=None,
        help="default: eager compile, plus max-autotune on CUDA",
    )
    ap.add_argument(
        "--autotune-batches",
        type=int,
        nargs="+",
        default=[128],
        help="batches at which the max-autotune variant runs (its compilation takes minutes)",
    )
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-check", action="store_true", help="skip the correctness guard")
    ap.add_argument("--check-batch", type=int, default=None, help="default 32 (quick: 16)")
    ap.add_argument("--no-cudnn-benchmark", action="store_true")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no compiled torch row after this many seconds, and no max-autotune row "
        f"after this less {AUTOTUNE_RESERVE_S:.0f} s (default {DEFAULT_GPU_BUDGET_S:.0f} on a "
        "GPU, so that one run ends in under 10 minutes; none on CPU; 0: none)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="CPU smoke test: batch 16 and 32, 2 steps, 1 warm-up, eager torch",
    )
    ap.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="trace a few gapjax steps and dump HLO into DIR",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="time every configuration in interleaved rounds (one block each per round) "
        "instead of one after the other: fair on a machine shared with other work",
    )
    ap.add_argument(
        "--note",
        action="append",
        default=[],
        help="a line for the report's notes (e.g. other work on the machine); repeatable",
    )
    return ap.parse_args(argv)


def _reexec_for_xla_dump(profile_dir: str) -> None:
    """XLA reads XLA_FLAGS when its backend starts: add the dump flags and start again."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_dump_to" in flags or os.environ.get("_TRAIN_THROUGHPUT_REEXEC"):
        return
    dump = Path(profile_dir).resolve() / "xla"
    os.environ["XLA_FLAGS"] = f"{flags} --xla_dump_to={dump} --xla_dump_hlo_module_re=.*step.*"
    os.environ["_TRAIN_THROUGHPUT_REEXEC"] = "1"
    print(f"re-executing with XLA_FLAGS={os.environ['XLA_FLAGS'].strip()}", flush=True)
    os.execv(sys.executable, [sys.executable, *sys.argv])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.profile and argv is None:
        _reexec_for_xla_dump(args.profile)
    if not any(
        k in os.environ for k in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")
    ):
        os.environ["XLA_CLIENT_MEM_FRACTION"] = "0.5"  # read when the GPU backend starts
    t_start = time.perf_counter()
    backend = jax.default_backend()
    on_gpu = backend in ("gpu", "cuda", "rocm")

    torch, torch_missing = (None, "--skip-torch") if args.skip_torch else import_torch()
    device = _torch_device(torch, args.device) if torch is not None else None
    if torch is not None and not args.no_cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    torch_gpu = bool(device and device.startswith("cuda"))

    quick = args.quick
    batches = args.batches or ([16, 32] if quick else [128, 512])
    dtypes = args.dtypes or ["float32", "bfloat16"]
    steps = args.steps or (2 if quick else 50 if on_gpu else 5)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 5 if on_gpu else 2)
    repeats = args.repeats or (3 if on_gpu and not quick else 1)
    variants = args.torch_variants or (
        ["eager"] if quick else ["eager", "compile"] + (["max-autotune"] if torch_gpu else [])
    )
    budget = (
        args.budget_s if args.budget_s is not None else (DEFAULT_GPU_BUDGET_S if on_gpu else None)
    )
    check_batch = args.check_batch or (16 if quick else 32)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"train_throughput_{backend}")
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    json_path, md_path = Path(f"{out}.json"), Path(f"{out}.md")

    notes = list(args.note)
    if torch is None:
        notes.append(f"torch rows skipped: {torch_missing}")
    elif torch_gpu != on_gpu:
        notes.append(
            f"JAX runs on {backend} but torch on {device}: the ratios compare different devices."
        )
    result = {
        "command": [Path(sys.executable).name, *sys.argv]
        if argv is None
        else ["train_throughput.py", *argv],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(torch, device),
        "versions": versions(torch),
        "numerics": numerics(torch),
        "settings": {
            "batches": batches,
            "dtypes": dtypes,
            "steps": steps,
            "warmup": warmup,
            "repeats": repeats,
            "pool": args.pool,
            "torch_variants": variants,
            "autotune_batches": args.autotune_batches,
            "budget_s": budget,
            "quick": quick,
            "interleave": args.interleave,
            "config": "configs/nin_cifar10_aug.py",
            "seed": args.seed,
        },
        "rows": [],
        "check": None,
        "notes": notes,
    }
    print(
        f"# NIN training throughput: JAX on {backend} ({result['machine']['jax_device_kind']}), "
        f"torch on {device or '-'}; steps {steps}, warm-up {warmup}, repeats {repeats}",
        flush=True,
    )

    if torch is not None and not args.skip_check:
        try:
            result["check"] = check_against_torch(
                torch, batch=check_batch, device=device, seed=args.seed
            )
            c = result["check"]
            print(
                f"check: loss rel diff {c['loss_max_rel_diff']:.2e}, logits "
                f"{c['logits_max_rel_diff']:.2e}, updates {c['update_max_rel_diff']:.2e}",
                flush=True,
            )
            if not c["loss_agrees_1e-4"]:
                notes.append("correctness guard: the losses differ by more than 1e-4 (see check)")
        except Exception as e:
            result["check"] = {"error": _error(e)}
            notes.append(f"correctness guard failed: {_error(e)}")

    rows = result["rows"]
    result["yardsticks"] = {}
    for d in dtypes:
        result["yardsticks"][d] = measure_dot_yardstick(d)
        print(f"jnp.dot yardstick {d}: {result['yardsticks'][d]['gflop_per_s']:.1f} GFLOP/s")
    configs_ = [(b, d) for b in batches for d in dtypes]
    if args.interleave:
        runners = []
        for b, d in configs_:
            print(f"gapjax {d} batch {b}: setting up ...", flush=True)
            step_fns = gapjax_runner(b, d, pool=args.pool, seed=args.seed)
            runners.append((f"gapjax {d} batch {b}", *step_fns, 0.0))
        if torch is not None:
            torch._dynamo.reset()
            for variant in variants:
                for b, d in configs_:
                    if variant == "max-autotune" and (
                        not torch_gpu or b not in args.autotune_batches
                    ):
                        continue
                    step_fns = torch_runner(
                        torch, variant, b, d, device=device, pool=args.pool, seed=args.seed
                    )
                    pause = 0.0 if torch_gpu else 0.05
                    runners.append((f"torch {variant} {d} batch {b}", *step_fns, pause))
        for d in dtypes:  # the jnp.dot yardstick in the same rounds
            runners.append((f"yardstick {d}", *_yardstick_runner(d), 0.0))
        for r in measure_interleaved(runners, steps=steps, warmup=warmup, repeats=repeats):
            if r["implementation"] == "yardstick":
                result["yardsticks"][r["dtype"]] = r
            else:
                rows.append(r)
        for r in rows:
            if r["status"] == "ok":
                print(
                    f"  {r['implementation']} {r['variant']} {r['dtype']} batch {r['batch']}: "
                    f"{r['images_per_s']:,.0f} images/s",
                    flush=True,
                )
    else:
        for b, d in configs_:
            print(f"gapjax {d} batch {b} ...", flush=True)
            rows.append(
                measure_gapjax(
                    b,
                    d,
                    steps=steps,
                    warmup=warmup,
                    repeats=repeats,
                    pool=args.pool,
                    seed=args.seed,
                    profile_dir=args.profile,
                )
            )
            print(f"  {rows[-1]['images_per_s']:,.0f} images/s", flush=True)
        # Eager rows first (cheap), then the compiled ones, batch by batch in the order given, so
        # that a spent --budget-s cuts the later batches' compiled rows, not batch 128's.
        torch_jobs = [(v, b, d) for v in variants if v == "eager" for b, d in configs_]
        torch_jobs += [(v, b, d) for b, d in configs_ for v in variants if v != "eager"]
        for variant, b, d in torch_jobs:
            row = {"implementation": "torch", "variant": variant, "dtype": d, "batch": b}
            if torch is None:
                rows.append({**row, "status": "skipped", "reason": torch_missing})
                continue
            if variant == "max-autotune" and not torch_gpu:
                rows.append({**row, "status": "skipped", "reason": "max-autotune: CUDA only"})
                continue
            if variant == "max-autotune" and b not in args.autotune_batches:
                rows.append({**row, "status": "skipped", "reason": "not in --autotune-batches"})
                continue
            elapsed = time.perf_counter() - t_start
            reserve = AUTOTUNE_RESERVE_S if variant == "max-autotune" else 0.0
            if variant != "eager" and budget and elapsed > budget - reserve:
                reason = f"time budget: {elapsed:.0f} s elapsed, --budget-s {budget:.0f}"
                if reserve:
                    reason += f" less {reserve:.0f} s kept for max-autotune's compilation"
                rows.append({**row, "status": "skipped", "reason": reason})
                continue
            print(f"torch {variant} {d} batch {b} ...", flush=True)
            r = measure_torch(
                torch,
                variant,
                b,
                d,
                device=device,
                steps=steps,
                warmup=warmup,
                repeats=repeats,
                pool=args.pool,
                seed=args.seed,
            )
            rows.append(r)
            if r["status"] == "ok":
                print(f"  {r['images_per_s']:,.0f} images/s", flush=True)
            else:
                print(f"  failed: {r['error'][:200]}", flush=True)
    add_ratios(rows)
    add_flops(rows, result["yardsticks"])
    result["targets"] = targets(rows)
    result["wall_s"] = time.perf_counter() - t_start
    result["machine"]["load_average_at_end"] = (
        os.getloadavg() if hasattr(os, "getloadavg") else None
    )
    text = markdown(result)
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    md_path.write_text(text)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
