"""Records tests/pooling/data/torch_windows.json from PyTorch (run by hand; needs torch).

    python tests/pooling/record_torch_windows.py

Every case pools the same deterministic input (NCHW for PyTorch) with one call of
torch.nn.functional and stores the output, the indices (max) and the input gradient of
sum(output * weights) with deterministic weights; tests/pooling/test_window_pool.py replays
them without torch.
"""

import json
import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def data(shape, seed):
    """Values with ties (rounded to 0.5) so that the index rule matters."""
    v = np.sin(np.arange(np.prod(shape)) * 1.3 + seed) * 3
    return (np.round(v * 2) / 2).astype(np.float32).reshape(shape)


CASES = [
    # (name, op, input shape (N, C, *spatial), kwargs)
    (
        "max2d_ceil_pad_dil",
        "max_pool2d",
        (2, 3, 9, 8),
        dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
    ),
    ("max2d_nin", "max_pool2d", (1, 2, 8, 8), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ("max1d", "max_pool1d", (2, 2, 11), dict(kernel_size=4, stride=3, padding=2)),
    (
        "max3d_ceil",
        "max_pool3d",
        (1, 2, 5, 6, 4),
        dict(kernel_size=(2, 3, 2), stride=(2, 2, 1), padding=(1, 1, 0), ceil_mode=True),
    ),
    (
        "avg2d_ceil_incl",
        "avg_pool2d",
        (2, 2, 7, 6),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
    ),
    (
        "avg2d_ceil_excl",
        "avg_pool2d",
        (2, 2, 7, 6),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    ),
    (
        "avg2d_divisor",
        "avg_pool2d",
        (1, 2, 6, 6),
        dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True, divisor_override=5),
    ),
    (
        "avg1d_ceil",
        "avg_pool1d",
        (1, 3, 10),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    ),
    (
        "avg3d",
        "avg_pool3d",
        (1, 2, 5, 4, 6),
        dict(kernel_size=(3, 2, 3), stride=(2, 2, 2), padding=(1, 0, 1), count_include_pad=False),
    ),
    (
        "lp2d_ceil",
        "lp_pool2d",
        (1, 2, 7, 7),
        dict(norm_type=2.0, kernel_size=3, stride=2, ceil_mode=True),
    ),
    ("lp1d", "lp_pool1d", (1, 2, 9), dict(norm_type=3.0, kernel_size=2, stride=2)),
    ("adaptive_avg2d", "adaptive_avg_pool2d", (2, 2, 7, 10), dict(output_size=(3, 4))),
    ("adaptive_avg2d_up", "adaptive_avg_pool2d", (1, 2, 3, 5), dict(output_size=(5, 7))),
    ("adaptive_avg1d", "adaptive_avg_pool1d", (1, 2, 11), dict(output_size=4)),
    ("adaptive_avg3d_none", "adaptive_avg_pool3d", (1, 2, 5, 4, 6), dict(output_size=(2, None, 4))),
    ("adaptive_max2d", "adaptive_max_pool2d", (2, 2, 7, 10), dict(output_size=(3, 4))),
    ("adaptive_max1d_up", "adaptive_max_pool1d", (1, 2, 5), dict(output_size=8)),
    ("adaptive_max3d", "adaptive_max_pool3d", (1, 2, 5, 4, 6), dict(output_size=(2, 3, 4))),
]


def main():
    import torch  # here, not at the top: pytest imports this file (doctests) without torch
    import torch.nn.functional as F

    out = {"torch": torch.__version__, "cases": {}}
    for i, (name, op, shape, kwargs) in enumerate(CASES):
        x = data(shape, i)
        t = torch.tensor(x, requires_grad=True)
        fn = getattr(F, op)
        idx = None
        if "max" in op:
            y, idx = fn(t, **kwargs, return_indices=True)
        elif op.startswith("lp"):
            t2 = t.abs() + 0.25  # positive: no NaN from fractional powers
            y = fn(t2, **kwargs)
        else:
            y = fn(t, **kwargs)
        w = torch.tensor(data(tuple(y.shape), 100 + i))
        (y * w).sum().backward()
        out["cases"][name] = {
            "op": op,
            "shape": list(shape),
            "kwargs": kwargs,
            "y": y.detach().numpy().round(6).tolist(),
            "indices": None if idx is None else idx.numpy().tolist(),
            "grad": t.grad.numpy().round(6).tolist(),
        }
    path = HERE / "data" / "torch_windows.json"
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({len(CASES)} cases, torch {torch.__version__})")


if __name__ == "__main__":
    main()
