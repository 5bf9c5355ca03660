"""The training loop: end to end, resume after a kill, 4 devices == 1, the guard, evaluation."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gapjax.models import nin
from gapjax.train import (
    Checkpointer,
    DivergenceError,
    default_config,
    evaluate,
    load_dataset,
    restore_model,
    run,
)

ROOT = Path(__file__).resolve().parents[2]


def small_config(**overrides):
    """The digits recipe (1,442 training images, 45 steps an epoch): about a second an epoch."""
    c = default_config()
    c.init = "he"
    c.batch_size = 32
    c.lr = 0.02
    c.last_layer_lr_mult = 1.0
    c.warmup_epochs = 1
    c.max_eval_examples = 100
    c.eval_batch_size = 64  # 100 = 64 + a padded batch of 36
    c.epochs = 3
    c.lr_boundaries = (3,)
    c.checkpoint_every = 1
    c.progress = False
    c.guard_epochs = 0
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def digits():
    return load_dataset(small_config())


def params_of(workdir):
    model, _ = restore_model(workdir)
    return nnx.split(model, nnx.Param, ...)[1]


def test_end_to_end_writes_results_and_the_loss_falls(tmp_path, digits):
    records = []
    results = run(small_config(epochs=4), tmp_path, dataset=digits, on_epoch=records.append)
    assert (tmp_path / "results.json").exists() and (tmp_path / "config.json").exists()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["epochs"] == 4 and saved["eval"]["count"] == 100
    assert results["eval"] == saved["eval"]
    losses = [r["train_loss"] for r in records]
    assert losses[-1] < 0.9 * losses[0], losses
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert all(
        {"train_loss", "eval_top1", "eval_top5", "images_per_s", "lr"} <= r.keys() for r in log
    )
    assert log[-1]["lr"] == pytest.approx(0.002)  # the step at epoch 3
    # The final evaluation equals an independent evaluation of the saved model.
    model, _ = restore_model(tmp_path)
    again = evaluate(model, digits.eval_images, digits.eval_labels, batch_size=50)
    assert again["top1"] == pytest.approx(saved["eval"]["top1"])
    assert again["loss"] == pytest.approx(saved["eval"]["loss"], rel=1e-5)


def test_evaluate_sums_then_divides_once_with_a_padded_batch(digits):
    model = nin.nin_digits(init="he", rngs=nnx.Rngs(3))
    model.eval()
    x, y = digits.eval_images[:37], digits.eval_labels[:37]
    logits = np.asarray(model(jnp.asarray(x)), np.float64)
    logp = (
        logits
        - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    got = evaluate(model, x, y, batch_size=16)  # 16 + 16 + 5 (padded to 16)
    assert got["count"] == 37
    assert got["loss"] == pytest.approx(-np.mean(logp[np.arange(37), y]), rel=1e-5)
    assert got["top1"] == pytest.approx(np.mean(np.argmax(logits, 1) == y))
    assert got["top5"] == pytest.approx(np.mean(np.any(top5 == y[:, None], 1)))


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, digits):
    config = small_config(epochs=3)
    run(config, tmp_path / "straight", dataset=digits)

    def crash(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "crashed", dataset=digits, on_epoch=crash)
    assert Checkpointer(tmp_path / "crashed" / "checkpoints").latest_epoch() == 2
    run(config, tmp_path / "crashed", dataset=digits)
    a, b = params_of(tmp_path / "straight"), params_of(tmp_path / "crashed")
    jax.tree.map(np.testing.assert_array_equal, a, b)
    epochs = [
        json.loads(line)["epoch"]
        for line in (tmp_path / "crashed/metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3]


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, digits):
    """A real kill: the CLI in a subprocess is killed after its first checkpoint."""
    overrides = {"epochs": 12, "checkpoint_every": 1}
    config = small_config(**overrides)
    cli = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        str(ROOT / "configs/digits_nin.py"),
    ]
    for k in (
        "init",
        "batch_size",
        "lr",
        "last_layer_lr_mult",
        "warmup_epochs",
        "max_eval_examples",
    ):
        cli.append(f"--config.{k}={config[k]}")
    for k in (
        "max_train_examples",
        "eval_batch_size",
        "epochs",
        "checkpoint_every",
        "guard_epochs",
    ):
        cli.append(f"--config.{k}={config[k]}")
    cli += ["--config.lr_boundaries=(3,)", "--config.progress=False", "--config.cam_images=0"]
    workdir = tmp_path / "killed"
    proc = subprocess.Popen([*cli, "--workdir", str(workdir)], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (workdir / "checkpoints" / "1").is_dir():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    reached = Checkpointer(workdir / "checkpoints").latest_epoch()
    assert reached is not None and reached < 12
    # The CLI's config (digits_nin plus the overrides) must equal `config` for the comparison.
    saved = json.loads((workdir / "config.json").read_text())
    for k, v in overrides.items():
        assert saved[k] == v
    resumed_config = small_config(**overrides)
    for k in ("name", "cam_images", "checkpoint_every"):
        resumed_config[k] = saved[k]
    resumed_config.lr_boundaries = tuple(saved["lr_boundaries"])
    run(resumed_config, workdir)
    run(resumed_config, tmp_path / "straight")
    jax.tree.map(
        np.testing.assert_array_equal, params_of(workdir), params_of(tmp_path / "straight")
    )
    epochs = [
        json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == list(range(1, 13))


def test_resuming_with_another_config_is_refused(tmp_path, digits):
    run(small_config(epochs=1), tmp_path, dataset=digits)
    with pytest.raises(ValueError, match=r"another configuration \(lr: 0.02 -> 0.05\)"):
        run(small_config(epochs=2, lr=0.05), tmp_path, dataset=digits)
    results = run(small_config(epochs=2), tmp_path, dataset=digits)  # more epochs: allowed
    assert results["epochs"] == 2


def test_guard_stops_a_run_at_chance_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    config = small_config(epochs=4, lr=1e-9, warmup_epochs=0, guard_epochs=2)
    with pytest.raises(DivergenceError, match="still at chance"):
        run(config, tmp_path, dataset=digits)
    assert Checkpointer(tmp_path / "checkpoints").latest_epoch() == 1
    assert not (tmp_path / "results.json").exists()


def test_guard_stops_a_non_finite_loss(tmp_path, digits):
    config = small_config(epochs=3, lr=1e8, warmup_epochs=0)
    with pytest.raises(DivergenceError, match="training loss is nan"):
        run(config, tmp_path, dataset=digits)


def test_four_simulated_devices_equal_one(tmp_path):
    script = textwrap.dedent(
        f"""
        import jax, numpy as np
        from flax import nnx
        from gapjax.train import default_config, load_dataset, make_mesh, restore_model, run
        import tests.train.test_loop as t
        assert len(jax.devices()) == 4
        config = t.small_config(epochs=1, max_train_examples=256)  # 8 steps: float drift is small
        data = load_dataset(config)
        one = run(config, "{tmp_path}/one", mesh=make_mesh(jax.devices()[:1]), dataset=data)
        four = run(config, "{tmp_path}/four", mesh=make_mesh(), dataset=data)
        a = nnx.split(restore_model("{tmp_path}/one")[0], nnx.Param, ...)[1]
        b = nnx.split(restore_model("{tmp_path}/four")[0], nnx.Param, ...)[1]
        pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
        diff = max(float(np.max(np.abs(x - y))) for x, y in pairs)
        scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(a))
        print("RESULT", diff / scale, one["eval"]["loss"], four["eval"]["loss"])
        """
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    rel, loss_one, loss_four = map(float, line.split()[1:])
    assert rel < 1e-4
    assert loss_four == pytest.approx(loss_one, rel=1e-4)


def test_batch_size_larger_than_the_dataset_is_refused(tmp_path, digits):
    from gapjax.train import make_mesh

    mesh = make_mesh(jax.devices()[:1])
    with pytest.raises(ValueError, match="larger than the 1442 training"):
        run(small_config(batch_size=2048), tmp_path, dataset=digits, mesh=mesh)


def test_bfloat16_mixed_precision_trains(tmp_path, digits):
    records = []
    run(small_config(dtype="bfloat16"), tmp_path, dataset=digits, on_epoch=records.append)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    model, _ = restore_model(tmp_path)
    assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32


def test_checkpoint_round_trip_of_optax_state_and_keys(tmp_path):
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.trace(0.9))
    params = {"w": jnp.arange(3.0)}
    tree = {"opt": tx.init(params), "key": jax.random.key(7), "params": params}
    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(5, tree)
    ckpt.wait()
    like = jax.tree.map(lambda x: x, tree)
    restored = ckpt.restore(5, like=like)
    np.testing.assert_array_equal(restored["params"]["w"], params["w"])
    np.testing.assert_array_equal(
        jax.random.key_data(restored["key"]), jax.random.key_data(tree["key"])
    )
    assert type(restored["opt"]) is type(tree["opt"])


def test_tensorboard_needs_tensorboardx_and_fails_before_any_work(tmp_path, digits):
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install tensorboardX"):
            run(small_config(tensorboard=True), tmp_path, dataset=digits)
        assert not (tmp_path / "config.json").exists()
    else:
        run(small_config(tensorboard=True, epochs=1), tmp_path, dataset=digits)
        assert any((tmp_path / "tensorboard").iterdir())


def test_time_limit_checkpoints_and_pauses(tmp_path, digits):
    config = small_config(epochs=3, time_limit_minutes=1e-6, checkpoint_every=5)
    first = run(config, tmp_path, dataset=digits)
    assert first == {"name": config.name, "complete": False, "epochs": 1}
    assert Checkpointer(tmp_path / "checkpoints").latest_epoch() == 1  # saved despite every=5
    assert not (tmp_path / "results.json").exists()
    config.time_limit_minutes = 0.0  # a run-control key: may change on resume
    done = run(config, tmp_path, dataset=digits)
    assert done["complete"] and done["epochs"] == 3


def test_example_limits_draw_a_random_subset_not_the_first_examples():
    from gapjax.train import load_splits

    config = small_config(max_train_examples=100, max_eval_examples=50)
    data = load_dataset(config)
    assert len(data.train_labels) == 100 and len(data.eval_labels) == 50
    assert len(np.unique(data.train_labels)) == 10  # every class, as in a random draw
    train, _, _ = load_splits(config)
    assert not np.array_equal(data.train_labels, train.labels[:100])
    np.testing.assert_array_equal(load_dataset(config).train_labels, data.train_labels)


def test_svhn_trains_on_train_plus_extra_minus_the_validation_images(monkeypatch):
    """The paper's protocol; the reader is replaced by synthetic splits (checksums need the
    official files)."""
    from gapjax import data as gdata
    from gapjax.train import load_splits

    def fake_split(n, offset):
        images = np.full((n, 32, 32, 3), offset % 251, np.uint8)
        return gdata.Split(images, np.arange(n, dtype=np.int32) % 10)

    def fake_load_svhn(path, *, splits, cache_dir=None):
        assert set(splits) == {"train", "test", "extra"}
        sizes = {"train": 4100, "test": 300, "extra": 2100}
        return {s: fake_split(sizes[s], i) for i, s in enumerate(splits)}

    monkeypatch.setattr(gdata, "load_svhn", fake_load_svhn)
    config = small_config(dataset="svhn", model="svhn", preprocess="none")
    train, test, name = load_splits(config)
    assert (len(train), len(test), name) == (4100 + 2100 - 6000, 300, "test")
    config.eval_split = "validation"
    train, valid, name = load_splits(config)
    assert (len(train), len(valid), name) == (200, 6000, "validation")
    assert np.bincount(valid.labels).tolist() == [600] * 10
