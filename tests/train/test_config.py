"""configs/*.py: each loads, validates and documents its command; validation; the CLI's errors."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from gapjax.train import default_config, quick, validate

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_"))
REQUIRED = {
    "digits_nin",
    "nin_cifar10",
    "nin_cifar10_aug",
    "nin_cifar10_fc",
    "nin_cifar10_fc_dropout",
    "nin_cifar10_caffe",
    "nin_cifar10_jpeg",
    "nin_cifar10_jpeg_aug",
    "nin_cifar100",
    "nin_svhn",
    "nin_mnist",
}


def load(name):
    return importlib.import_module(f"configs.{name}")


def test_every_required_config_exists():
    assert REQUIRED <= set(CONFIGS), sorted(REQUIRED - set(CONFIGS))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid_and_documented(name):
    module = load(name)
    config = module.get_config()
    validate(config)
    validate(quick(config))
    assert config.name == name
    doc = module.__doc__
    assert f"--config configs/{name}.py" in doc.replace("\\\n", "").replace("  ", " ")
    assert "Expected" in doc and ("Runtime" in doc or "runtime" in doc or " s " in doc)


def test_paper_solver_and_architectures():
    c10 = load("nin_cifar10").get_config()
    assert (c10.lr, c10.bias_lr_mult, c10.last_layer_lr_mult) == (0.1, 2.0, 0.1)
    assert (c10.weight_decay, c10.momentum, c10.batch_size) == (1e-4, 0.9, 128)
    assert (c10.epochs, tuple(c10.lr_boundaries), c10.lr_decay) == (260, (200, 230), 0.1)
    assert (c10.init, c10.preprocess, c10.augment) == ("spec", "gcn_zca", False)
    assert load("nin_cifar10_aug").get_config().augment
    assert load("nin_cifar10_fc").get_config().head == "fc"
    assert load("nin_cifar10_fc_dropout").get_config().head == "fc_dropout"
    assert load("nin_cifar10_caffe").get_config().model == "cifar10_caffe"
    c100 = load("nin_cifar100").get_config()
    assert (c100.lr, c100.weight_decay, c100.model) == (0.02, 5e-4, "cifar100")
    assert load("nin_svhn").get_config().preprocess == "gcn_lcn"
    jpeg = load("nin_cifar10_jpeg_aug").get_config()
    assert (jpeg.dataset, jpeg.augment) == ("cifar10_jpeg", True)


def test_validate_rejects_unknown_keys_and_bad_values():
    c = default_config().to_dict()
    c.update(learning_rate=0.1, epochs=0, dataset="imagenet", lr_boundaries=(30, 20))
    with pytest.raises(ValueError) as e:
        validate(ml_collections.ConfigDict(c))
    message = str(e.value)
    for part in (
        "unknown key 'learning_rate'",
        "epochs must be a positive int",
        "dataset='imagenet'",
    ):
        assert part in message
    assert "lr_boundaries must be increasing" in message


def test_the_schema_covers_every_key_once():
    from gapjax.train import config as config_lib

    assert sorted(config_lib.SCHEMA_KEYS) == sorted(default_config().keys())
    assert len(set(config_lib.SCHEMA_KEYS)) == len(config_lib.SCHEMA_KEYS)


def _with(key, value):
    c = default_config().to_dict()  # unlocked: any type can be set, as a hand-built config can
    c[key] = value
    return ml_collections.ConfigDict(c)


# The examples (issue 20), each rejected naming the key and the value.
@pytest.mark.parametrize(
    "key, value",
    [
        ("momentum", float("nan")),
        ("momentum", float("inf")),
        ("momentum", 1.0),
        ("weight_decay", float("nan")),
        ("bias_lr_mult", -2.0),
        ("last_layer_lr_mult", -0.1),
        ("max_train_examples", -5),
        ("augment_padding", -3),
        ("batch_size", True),
        ("lr_boundaries", (20, float("nan"))),
        ("lr_boundaries", (20, "nan")),
        ("lr_boundaries", (20, 20)),
        ("augment", "no"),
        ("seed", -1),
        ("time_limit_minutes", float("inf")),
        ("epochs", 2.5),
    ],
)
def test_validate_rejects_the_reported_values(key, value):
    with pytest.raises(ValueError) as e:
        validate(_with(key, value))
    assert key in str(e.value) and repr(value) in str(e.value)


BAD = {
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "negative": -3,
    "negative float": -0.5,
    "bool": True,
    "string": "7",
    "none": None,
    "list": [1],
}


@pytest.mark.parametrize("key", sorted(default_config().keys()))
def test_every_key_rejects_every_kind_of_bad_value(key):
    """The sweep: non-finite floats, negatives, bools for ints, wrong types, for every key.
    A value is allowed only where it is a legal value of that key's kind."""
    default = default_config()[key]
    for kind, value in BAD.items():
        free_text = key in ("name", "data_dir", "cache_dir") and isinstance(value, str)
        legal = (
            (isinstance(default, bool) and value is True)
            or free_text
            or (key == "lr_boundaries" and value == [1])
        )
        if legal:
            validate(_with(key, value))
            continue
        with pytest.raises(ValueError, match=key) as e:
            validate(_with(key, value))
        assert repr(value) in str(e.value), (key, kind, str(e.value))
    validate(_with(key, default))


def test_quick_shrinks():
    q = quick(load("nin_cifar10").get_config())
    assert (q.epochs, q.max_train_examples, q.max_eval_examples, q.quick) == (2, 512, 256, True)


def cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_says_which_file_to_put_where(tmp_path):
    out = cli(
        "--config",
        "configs/nin_mnist.py",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.data_dir={tmp_path}",
        "--config.quick=True",
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: MNIST" in out.stderr and "place it at" in out.stderr
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_rejects_unknown_keys(tmp_path):
    out = cli("--config", "configs/digits_nin.py", "--workdir", str(tmp_path), "--config.epoch=3")
    assert out.returncode != 0
    assert "epoch" in out.stderr and "epochs" in out.stderr  # ml_collections suggests the key


def test_cli_quick_run_and_the_other_entry_points(tmp_path):
    """experiments.train (quick), then evaluate, cam and reproduce on its workdir."""
    workdir = tmp_path / "digits_nin"
    out = cli(
        "--config",
        "configs/digits_nin.py",
        "--workdir",
        str(workdir),
        "--config.quick=True",
        "--config.cam_images=4",
        "--config.progress=False",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.splitlines()[0])
    assert summary["name"] == "digits_nin" and summary["epochs"] == 2
    assert (workdir / "cam.png").stat().st_size > 1000
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", *a], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    ev = run("experiments.evaluate", "--workdir", str(workdir))
    assert ev.returncode == 0, ev.stderr[-2000:]
    metrics = json.loads(ev.stdout)
    results = json.loads((workdir / "results.json").read_text())
    assert metrics["count"] == 355  # the whole test split, not the quick subset
    assert 0 <= metrics["top1"] <= 1 and results["eval"]["count"] == 256
    rep = run(
        "experiments.reproduce",
        "--workdir",
        str(tmp_path),
        "--configs",
        "digits_nin",
        "nin_cifar10",
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "| digits_nin | - |" in rep.stdout and "| nin_cifar10 | 10.41 | not run |" in rep.stdout
    assert (tmp_path / "curves.png").exists() and (tmp_path / "results.md").exists()
