"""Checkpoints: damaged ones (truncated, flipped, deleted or emptied files) are named, never
restored as other numbers, and a run resumes from the newest one that restores."""

import json
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gapjax.train import Checkpointer, CheckpointError, restore_model, run
from tests.train.test_loop import small_config


def tree(epoch):
    return {
        "w": jnp.arange(3000.0) * epoch,
        "b": {"x": jnp.arange(5.0) + epoch},
        "key": jax.random.key(epoch),
        "step": jnp.asarray(epoch, jnp.int32),
    }


LIKE = tree(0)


def saved(directory, epochs=(1, 2)):
    ckpt = Checkpointer(directory, keep=5)
    for e in epochs:
        ckpt.save(e, tree(e))
        ckpt.wait()
    ckpt.close()
    return directory


def assert_tree(restored, epoch):
    expected = tree(epoch)
    for k in ("w", "step"):
        np.testing.assert_array_equal(restored[k], expected[k])
    np.testing.assert_array_equal(restored["b"]["x"], expected["b"]["x"])
    np.testing.assert_array_equal(
        jax.random.key_data(restored["key"]), jax.random.key_data(expected["key"])
    )


def files(folder):
    return sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip(path, where=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


def empty(folder):
    for p in list(folder.iterdir()):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


DAMAGE = {
    "truncate the largest data file": lambda s: truncate(files(s)[-1]),
    "flip a byte of the largest data file": lambda s: flip(files(s)[-1]),
    "flip a byte of every data file": lambda s: [flip(p, 0.7) for p in files(s / "default")],
    "truncate _METADATA": lambda s: truncate(s / "default" / "_METADATA"),
    "truncate the manifest": lambda s: truncate(s / "default" / "manifest.ocdbt"),
    "delete the data files": lambda s: [p.unlink() for p in s.rglob("*") if p.parent.name == "d"],
    "delete the item folder": lambda s: shutil.rmtree(s / "default"),
    "empty the checkpoint folder": empty,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_named_or_restores_unchanged(tmp_path, damage):
    directory = saved(tmp_path / "checkpoints")
    DAMAGE[damage](directory / "2")
    ckpt = Checkpointer(directory)
    with pytest.raises(CheckpointError, match=rf"checkpoint {directory / '2'} ") as e:
        ckpt.restore(2, like=LIKE)
    assert "See full TensorStore" not in str(e.value) and "\n" not in str(e.value)
    assert_tree(ckpt.restore(1, like=LIKE), 1)  # the older one is untouched
    ckpt.close()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_restore_latest_falls_back_and_sets_the_damaged_one_aside(tmp_path, damage):
    directory = saved(tmp_path / "checkpoints")
    DAMAGE[damage](directory / "2")
    ckpt = Checkpointer(directory, keep=5)
    with pytest.warns(UserWarning, match=rf"checkpoint {directory / '2'} .*epoch 1 instead"):
        epoch, restored = ckpt.restore_latest(like=LIKE, set_aside=True)
    assert epoch == 1
    assert_tree(restored, 1)
    assert ckpt.epochs() == [1]
    assert (tmp_path / "checkpoints.unrestorable" / "2").is_dir()  # kept for inspection
    ckpt.save(2, tree(2))  # the epoch can be saved again
    ckpt.wait()
    assert_tree(ckpt.restore(2, like=LIKE), 2)
    ckpt.close()


def test_restore_latest_without_set_aside_moves_nothing(tmp_path):
    directory = saved(tmp_path / "checkpoints")
    truncate(files(directory / "2")[-1])
    ckpt = Checkpointer(directory)
    with pytest.warns(UserWarning, match="epoch 1 instead"):
        assert ckpt.restore_latest(like=LIKE)[0] == 1
    assert ckpt.epochs() == [1, 2]
    ckpt.close()


def test_when_no_checkpoint_restores_the_error_names_the_directory_and_moves_nothing(tmp_path):
    directory = saved(tmp_path / "checkpoints")
    for epoch in (1, 2):
        truncate(files(directory / str(epoch))[-1])
    ckpt = Checkpointer(directory)
    with pytest.raises(CheckpointError, match=rf"no checkpoint in {directory} restores") as e:
        ckpt.restore_latest(like=LIKE, set_aside=True)
    assert f"{directory / '1'}" in str(e.value) and f"{directory / '2'}" in str(e.value)
    assert ckpt.epochs() == [1, 2] and not (tmp_path / "checkpoints.unrestorable").exists()
    ckpt.close()


def test_no_checkpoint_at_all_and_a_missing_epoch(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.restore_latest(like=LIKE) == (None, LIKE)
    with pytest.raises(FileNotFoundError, match="no checkpoint of epoch 3"):
        ckpt.restore(3, like=LIKE)
    ckpt.close()


def test_checkpoints_without_checksums_still_restore(tmp_path):
    """Checkpoints written before crc32.json existed restore (unchecked)."""
    directory = saved(tmp_path / "checkpoints")
    (directory / "crc32.json").unlink()
    ckpt = Checkpointer(directory)
    assert_tree(ckpt.restore(2, like=LIKE), 2)
    ckpt.close()


# ---- the training run ----


def params(workdir):
    return nnx.split(restore_model(workdir)[0], nnx.Param, ...)[1]


@pytest.fixture(scope="module")
def digits():
    from gapjax.train import load_dataset

    return load_dataset(small_config(max_train_examples=256))


def test_a_run_resumes_from_the_newest_checkpoint_that_restores(tmp_path, digits):
    config = small_config(epochs=3, max_train_examples=256, keep_checkpoints=3)
    run(config, tmp_path / "straight", dataset=digits)

    def crash(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    workdir = tmp_path / "damaged"
    with pytest.raises(KeyboardInterrupt):
        run(config, workdir, dataset=digits, on_epoch=crash)
    truncate(files(workdir / "checkpoints" / "2")[-1])
    with pytest.warns(UserWarning, match="epoch 1 instead"):  # evaluation falls back too
        restore_model(workdir)
    assert (workdir / "checkpoints" / "2").is_dir()  # and moves nothing
    with pytest.raises(CheckpointError, match=rf"checkpoint {workdir / 'checkpoints' / '2'} "):
        restore_model(workdir, epoch=2)
    with pytest.warns(UserWarning, match=rf"{workdir / 'checkpoints' / '2'} .*epoch 1 instead"):
        results = run(config, workdir, dataset=digits)
    assert results["epochs"] == 3
    jax.tree.map(np.testing.assert_array_equal, params(workdir), params(tmp_path / "straight"))
    log = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3]


def test_a_run_whose_checkpoints_all_fail_never_starts_over(tmp_path, digits):
    config = small_config(epochs=2, max_train_examples=256)
    run(config, tmp_path, dataset=digits)
    for epoch in (1, 2):
        truncate(files(tmp_path / "checkpoints" / str(epoch))[-1])
    before = (tmp_path / "metrics.jsonl").read_text()
    config.epochs = 3
    with pytest.raises(CheckpointError, match=rf"no checkpoint in {tmp_path / 'checkpoints'}"):
        run(config, tmp_path, dataset=digits)
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_a_damaged_config_json_or_metrics_line_is_named(tmp_path, digits):
    config = small_config(epochs=1, max_train_examples=256)
    run(config, tmp_path, dataset=digits)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 2, "train_lo')  # killed mid-line
    config.epochs = 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(config, tmp_path, dataset=digits)
    assert any(f"{metrics}: dropped lines [2]" in str(w.message) for w in caught)
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1, 2]
    saved_config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved_config, "momentum": -1}))
    with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'}: config: momentum"):
        restore_model(tmp_path)
    (tmp_path / "config.json").write_text('{"name": "digi')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'}: not readable JSON"):
        run(config, tmp_path, dataset=digits)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'}: not readable JSON"):
        restore_model(tmp_path)
