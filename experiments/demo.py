"""Pools a batch of feature maps with every global pooling function and prints the results.

    python -m experiments.demo [--batch 8] [--size 16] [--channels 32] [--seed 0]

The batch imitates padded images: each example has a random valid height and width in its
top-left corner and zeros elsewhere, described by a (batch, height, width) mask. For every
function the demo prints the output shape, the mean pooled value with and without the mask, and
the compile and per-call times, then checks that masked pooling equals pooling the cropped
valid region of the first image.
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import gapjax


def make_batch(key: jax.Array, batch: int, size: int, channels: int):
    """ReLU feature maps with a random valid region per example, and its mask."""
    k_x, k_h, k_w = jax.random.split(key, 3)
    x = jax.nn.relu(jax.random.normal(k_x, (batch, size, size, channels)))
    heights = jax.random.randint(k_h, (batch,), size // 2, size + 1)
    widths = jax.random.randint(k_w, (batch,), size // 2, size + 1)
    rows = jnp.arange(size)[None, :, None] < heights[:, None, None]
    cols = jnp.arange(size)[None, None, :] < widths[:, None, None]
    mask = rows & cols
    return jnp.where(mask[..., None], x, 0.0), mask, heights, widths


def calls(x: jax.Array, key: jax.Array) -> dict:
    """Every public global pooling function, with typical settings, as name -> callable."""
    _, h, w, _ = x.shape
    scores = jnp.linspace(-1.0, 1.0, h * w).reshape(1, h, w)
    return {
        "global_avg_pool": lambda x, m: gapjax.global_avg_pool(x, mask=m),
        "global_max_pool": lambda x, m: gapjax.global_max_pool(x, mask=m),
        "global_min_pool": lambda x, m: gapjax.global_min_pool(x, mask=m),
        "global_sum_pool": lambda x, m: gapjax.global_sum_pool(x, mask=m),
        "global_lp_pool": lambda x, m: gapjax.global_lp_pool(x, 2.0, mask=m),
        "gem_pool": lambda x, m: gapjax.gem_pool(x, 3.0, mask=m),
        "lse_pool": lambda x, m: gapjax.lse_pool(x, 5.0, mask=m),
        "topk_pool": lambda x, m: gapjax.topk_pool(x, 0.1, k_min=0.1, alpha=0.7, mask=m),
        "mixed_pool": lambda x, m: gapjax.mixed_pool(x, 0.5, mask=m),
        "avgmax_pool": lambda x, m: gapjax.avgmax_pool(x, mask=m),
        "catavgmax_pool": lambda x, m: gapjax.catavgmax_pool(x, mask=m),
        "soft_pool": lambda x, m: gapjax.soft_pool(x, mask=m),
        "weighted_avg_pool": lambda x, m: gapjax.weighted_avg_pool(x, jnp.exp(scores), mask=m),
        "attention_pool": lambda x, m: gapjax.attention_pool(x, 4 * scores, mask=m),
        "global_stochastic_pool": lambda x, m: gapjax.global_stochastic_pool(
            x, key=key, train=True, mask=m
        ),
    }


def timed(fn, *args, repeats: int = 20) -> tuple[jax.Array, float, float]:
    """The result, the first call's time (compile) and the median later call, in ms."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return out, first * 1e3, float(np.median(times)) * 1e3 if times else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="examples in the batch")
    parser.add_argument("--size", type=int, default=16, help="height and width of the maps")
    parser.add_argument("--channels", type=int, default=32, help="channels of the maps")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    args = parser.parse_args(argv)
    for name in ("batch", "size", "channels"):
        if getattr(args, name) < 2:
            parser.error(f"--{name} must be at least 2, got {getattr(args, name)}")

    key = jax.random.key(args.seed)
    x, mask, heights, widths = make_batch(key, args.batch, args.size, args.channels)
    device = jax.devices()[0]
    print(f"gapjax {gapjax.__version__} | jax {jax.__version__} on {device.platform} ({device})")
    print(
        f"x: {x.shape} {x.dtype}; valid regions (h x w): "
        + ", ".join(f"{h}x{w}" for h, w in zip(heights.tolist(), widths.tolist(), strict=True))
    )
    print()
    header = (
        f"{'function':<24}{'output':>10}{'mean':>10}{'masked':>10}{'compile ms':>12}{'call ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, fn in calls(x, key).items():
        plain, _, _ = timed(fn, x, None, repeats=0)
        masked, compile_ms, call_ms = timed(fn, x, mask)
        shape = "x".join(map(str, masked.shape))
        print(
            f"{name:<24}{shape:>10}{float(plain.mean()):>10.4f}{float(masked.mean()):>10.4f}"
            f"{compile_ms:>12.1f}{call_ms:>9.3f}"
        )

    # The mask makes pooling ignore the padding: compare with the cropped first image.
    h, w = int(heights[0]), int(widths[0])
    crop = x[:1, :h, :w]
    ok = True
    for name, fn in calls(x, key).items():
        if name in ("weighted_avg_pool", "attention_pool", "global_stochastic_pool"):
            continue  # their weights/keys depend on the full map's shape
        full = fn(x[:1], mask[:1])
        cropped = fn(crop, None)
        if not np.allclose(full, cropped, rtol=1e-5, atol=1e-6):
            print(f"MISMATCH: {name} with a mask differs from {name} of the cropped region")
            ok = False
    print()
    print("masked pooling == pooling the cropped valid region:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
