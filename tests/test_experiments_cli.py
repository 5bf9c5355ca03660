"""The command lines' contract: bad input ends in one ``error:`` line naming the key or path and
a documented exit status (2: usage), never a traceback; a damaged newest checkpoint is named and
the run resumes from the one before; the time limit still pauses with 75."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(module, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_usage_error(out, *names):
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    for name in names:
        assert name in lines[0], (name, lines[0])


TRAIN = ("--config", "configs/digits_nin.py")


@pytest.mark.parametrize(
    "override, names",
    [
        ("--config.learning_rate=nan", ["'learning_rate'"]),
        ("--config.epoch=3", ["'epoch'", "did you mean 'epochs'?"]),
        ("--config.momentum=nan", ["momentum", "nan"]),
        ("--config.max_train_examples=-5", ["max_train_examples", "-5"]),
        ("--config.batch_size=True", ["batch_size", "True"]),
        ("--config.lr_boundaries=(20, nan)", ["lr_boundaries", "nan"]),
        ("--no_such_flag=1", ["no_such_flag"]),
    ],
)
def test_train_rejects_bad_overrides_in_one_line(tmp_path, override, names):
    """The issue's cases (every key's bad values are swept in-process in test_config.py)."""
    out = cli("train", *TRAIN, "--workdir", str(tmp_path / "run"), override)
    assert_usage_error(out, *names)
    assert not (tmp_path / "run").exists()  # rejected before any work


def test_train_rejects_a_missing_config_file_and_missing_flags(tmp_path):
    assert_usage_error(
        cli("train", "--config", "configs/nope.py", "--workdir", str(tmp_path)), "configs/nope.py"
    )
    assert_usage_error(cli("train", *TRAIN), "--workdir")


def test_train_rejects_a_workdir_that_is_a_file(tmp_path):
    file = tmp_path / "file"
    file.write_text("not a directory")
    assert_usage_error(cli("train", *TRAIN, "--workdir", str(file)), str(file), "not a directory")
    assert_usage_error(cli("train", *TRAIN, "--workdir", str(file / "run")), str(file / "run"))


def test_train_rejects_a_read_only_workdir(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a directory of /proc
        workdir = Path("/proc/1")
        if not workdir.is_dir():
            pytest.skip("no /proc/1 to stand for a read-only directory")
    else:
        workdir = tmp_path / "read-only"
        workdir.mkdir()
        workdir.chmod(0o555)
    out = cli("train", *TRAIN, "--workdir", str(workdir), "--config.quick=True")
    assert_usage_error(out, str(workdir), "not writable")


def test_the_other_entry_points_name_the_path(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    assert_usage_error(cli("evaluate", "--workdir", str(file)), str(file))
    assert_usage_error(cli("cam", "--workdir", str(tmp_path / "none")), str(tmp_path / "none"))
    assert_usage_error(cli("reproduce", "--workdir", str(file)), str(file))


def truncate_largest(folder):
    largest = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def test_pause_resume_and_a_damaged_newest_checkpoint(tmp_path):
    """75 at the time limit; the same command finishes; with the newest checkpoint truncated,
    the same command names it and resumes from the one before; with every checkpoint damaged
    it refuses (2) instead of starting over."""
    workdir = tmp_path / "run"
    command = [
        *TRAIN,
        "--workdir",
        str(workdir),
        "--config.quick=True",
        "--config.progress=False",
        "--config.cam_images=0",
        "--config.time_limit_minutes=1e-9",
    ]
    paused = cli("train", *command)
    assert paused.returncode == 75, paused.stderr[-3000:]
    assert "run the same command again" in paused.stderr
    done = cli("train", *command)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["1", "2"]

    truncate_largest(checkpoints / "2")
    resumed = cli("train", *command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr and "TensorStore" not in resumed.stderr
    assert f"checkpoint {checkpoints / '2'} cannot be restored" in resumed.stderr
    assert "Resuming from the checkpoint of epoch 1 instead" in resumed.stderr
    assert (tmp_path / "run" / "checkpoints.unrestorable" / "2").is_dir()

    for epoch in ("1", "2"):
        truncate_largest(checkpoints / epoch)
    refused = cli("train", *command)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error: ")]
    assert f"no checkpoint in {checkpoints} restores" in line


def test_bundle_rejects_an_out_that_is_a_file(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    assert_usage_error(cli("bundle", "--out", str(file), "--no-wheels"), str(file))
