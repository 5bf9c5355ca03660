"""The on-disk cache of decoded splits: hits, invalidation, atomic writes, corrupt entries."""

import os
import time

import numpy as np
import pytest

from gapjax.data import Split, cached_splits


class Source:
    """A source file whose content is the number of examples; counts how often it is read."""

    def __init__(self, path, n=3):
        self.path, self.reads = path, 0
        self.write(n)

    def write(self, n):
        self.path.write_text(str(n))

    def build(self):
        self.reads += 1
        n = int(self.path.read_text())
        images = np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2, 1)
        return {
            "train": Split(images, np.arange(n, dtype=np.int32) % 2, ("even", "odd")),
            "test": Split(images[:1], np.zeros(1, np.int32), ("even", "odd")),
        }


def load(source, cache, **kwargs):
    kwargs = {"name": "toy", "version": "1", **kwargs}
    return cached_splits(source.path, cache_dir=cache, build=source.build, **kwargs)


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k].images, b[k].images)
        np.testing.assert_array_equal(a[k].labels, b[k].labels)
        assert a[k].class_names == b[k].class_names


def test_hit_returns_the_same_arrays_without_reading(tmp_path):
    src = Source(tmp_path / "src")
    first = load(src, tmp_path / "cache")
    second = load(src, tmp_path / "cache")
    assert src.reads == 1
    assert_same(first, second)
    assert_same(second, src.build())
    (entry,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == [
        "meta.json",
        "test.images.npy",
        "test.labels.npy",
        "train.images.npy",
        "train.labels.npy",
    ]


def test_changed_source_invalidates_and_replaces_the_entry(tmp_path):
    src = Source(tmp_path / "src")
    load(src, tmp_path / "cache")
    old_entries = set((tmp_path / "cache").iterdir())
    src.write(5)  # new size and content
    assert len(load(src, tmp_path / "cache")["train"]) == 5
    assert src.reads == 2
    new_entries = set((tmp_path / "cache").iterdir())
    assert len(new_entries) == 1 and new_entries.isdisjoint(old_entries)  # stale entry removed
    # Same size, new mtime only: still a new entry.
    src.write(7)
    st = src.path.stat()
    os.utime(src.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert len(load(src, tmp_path / "cache")["train"]) == 7
    assert src.reads == 3


def test_reader_version_and_name_are_part_of_the_key(tmp_path):
    src = Source(tmp_path / "src")
    load(src, tmp_path / "cache")
    load(src, tmp_path / "cache", version="2")
    assert src.reads == 2
    load(src, tmp_path / "cache", name="other")
    assert src.reads == 3
    assert len(list((tmp_path / "cache").iterdir())) == 2  # toy (v2) and other


def test_folder_and_multiple_sources(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a").write_text("1")
    src = Source(tmp_path / "n")
    calls = []

    def build():
        calls.append(1)
        return src.build()

    def run():
        return cached_splits(
            [folder, src.path], cache_dir=tmp_path / "cache", name="multi", build=build
        )

    run()
    run()
    assert len(calls) == 1
    (folder / "sub").mkdir()
    (folder / "sub" / "b").write_text("new file deep inside")
    run()
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "delete", "meta"])
def test_damaged_entry_is_rebuilt_with_a_warning(tmp_path, damage):
    src = Source(tmp_path / "src")
    expected = load(src, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    target = entry / "train.images.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-3])
    elif damage == "delete":
        target.unlink()
    else:
        (entry / "meta.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable.*rebuilding"):
        again = load(src, tmp_path / "cache")
    assert src.reads == 2
    assert_same(again, expected)
    assert_same(load(src, tmp_path / "cache"), expected)  # repaired: a clean hit
    assert src.reads == 2


def test_failed_build_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.write_text("x")

    def build():
        raise ValueError("src: corrupt")

    with pytest.raises(ValueError, match="src: corrupt"):
        cached_splits(src, cache_dir=tmp_path / "cache", name="toy", build=build)
    assert list((tmp_path / "cache").iterdir()) == []


def test_no_cache_dir_always_builds(tmp_path):
    src = Source(tmp_path / "src")
    load(src, None)
    load(src, None)
    assert src.reads == 2


def test_a_hit_is_fast(tmp_path):
    path = tmp_path / "src"
    path.write_text("x")
    big = {"train": Split(np.ones((20_000, 32, 32, 3), np.uint8), np.zeros(20_000, np.int32))}
    cached_splits(path, cache_dir=tmp_path / "c", name="big", build=lambda: big)
    start = time.perf_counter()
    out = cached_splits(path, cache_dir=tmp_path / "c", name="big", build=lambda: 1 / 0)
    assert time.perf_counter() - start < 2.0
    assert out["train"].images.shape == (20_000, 32, 32, 3)


def test_bad_name(tmp_path):
    with pytest.raises(ValueError, match="name='a/b'"):
        cached_splits(tmp_path, cache_dir=tmp_path / "c", name="a/b", build=dict)


@pytest.mark.parametrize("part", ["train.images.npy", "train.labels.npy", "meta.json"])
def test_every_truncation_or_flipped_byte_of_an_entry_is_caught_and_rebuilt(tmp_path, part):
    """The corruption sweep: a damaged entry never serves wrong arrays or class names (the
    CRC-32 of each array and of meta.json's content are kept); it is rebuilt with a warning
    naming it."""
    src = Source(tmp_path / "src")
    expected = load(src, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    original = (entry / part).read_bytes()
    variants = [original[:n] for n in range(0, len(original), 7)]
    for i in range(len(original)):
        flipped = bytearray(original)
        flipped[i] ^= 0x01 if part == "meta.json" else 0xFF
        variants.append(bytes(flipped))
    for variant in variants:
        (entry / part).write_bytes(variant)
        reads = src.reads
        with pytest.warns(UserWarning, match=rf"{entry}.*rebuilding"):
            again = load(src, tmp_path / "cache")
        assert src.reads == reads + 1
        assert_same(again, expected)
        (entry / part).write_bytes(original)
