"""Smoke test of benchmarks/train_throughput.py: the gapjax measurement runs and the weight
transfer to the PyTorch reference reproduces gapjax's losses (skipped without torch)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_throughput", module)
    spec.loader.exec_module(module)
    return module


def test_measure_gapjax_runs(bench):
    row = bench.measure_gapjax(8, "float32", steps=1, warmup=1, pool=1)
    assert row["status"] == "ok"
    assert row["implementation"] == "gapjax" and row["batch"] == 8
    assert row["images_per_s"] > 0
    assert row["compile_s"] > 0
    assert np.isfinite(row["mean_loss"])


def test_gapjax_matches_torch_reference(bench):
    torch = pytest.importorskip("torch")
    check = bench.check_against_torch(torch, batch=8, device="cpu", float64_reference=False)
    np.testing.assert_allclose(check["loss_gapjax"], check["loss_torch"], rtol=1e-4)
    assert check["loss_agrees_1e-4"]
    assert check["logits_max_rel_diff"] < 1e-4
    assert check["update_max_rel_diff"] < 5e-2  # float32-conditioned; see check_against_torch


def test_torch_reference_has_nin_parameter_count(bench):
    torch = pytest.importorskip("torch")
    model = bench.build_torch_nin(torch)
    assert sum(p.numel() for p in model.parameters()) == bench.NIN_PARAMS == 966_986


def test_step_flops_and_yardstick(bench):
    # conv1 5x5 3->192 at 32x32 (no input gradient), then every other layer x3.
    per_image = (
        2 * 1024 * 25 * 3 * 192 * 2
        + 3 * 2 * 1024 * (192 * 160 + 160 * 96)
        + 3 * 2 * 256 * (25 * 96 * 192 + 2 * 192 * 192)
        + 3 * 2 * 64 * (9 * 192 * 192 + 192 * 192 + 192 * 10)
    )
    assert bench.step_flops(4) == pytest.approx(4 * per_image)
    y = bench.measure_dot_yardstick("float32", n=64, repeats=2)
    assert y["gflop_per_s"] > 0 and y["n"] == 64
    rows = [
        {
            "status": "ok",
            "implementation": "gapjax",
            "dtype": "float32",
            "batch": 4,
            "images_per_s": 8.0,
        }
    ]
    bench.add_flops(rows, {"float32": y})
    assert rows[0]["gflop_per_s"] == pytest.approx(8 * per_image / 1e9)  # 2 steps/s
    assert rows[0]["fraction_of_dot"] == pytest.approx(rows[0]["gflop_per_s"] / y["gflop_per_s"])
