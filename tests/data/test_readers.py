"""CIFAR, SVHN, MNIST and digits readers on small files written in the official formats."""

import gzip
import os
import pickle
import struct
import sys
import time

import numpy as np
import pytest
import scipy.io
from datafakes import (
    cifar10_binary_files,
    cifar10_python_files,
    cifar100_binary_files,
    cifar100_python_files,
    idx_images,
    idx_labels,
    py2_pickle,
    random_images,
    write_mnist,
    write_tar,
    write_tree,
)

from gapjax.data import (
    Split,
    load_cifar10,
    load_cifar100,
    load_digits,
    load_mnist,
    load_svhn,
    read_idx_images,
    read_idx_labels,
    read_svhn_mat,
)
from gapjax.data import readers as readers_module
from gapjax.data._files import OFFICIAL_FILES, RemoteFile, sha256sum, verify_file

CIFAR10_CLASSES = tuple("airplane automobile bird cat deer dog frog horse ship truck".split())


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def assert_split(split: Split, images, labels, class_names=None):
    assert isinstance(split, Split)
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)
    if class_names is not None:
        assert split.class_names == tuple(class_names)


# ------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["archive", "extracted", "parent_of_extracted"])
def test_cifar10_python(tmp_path, rng, form):
    files, expected = cifar10_python_files(rng)
    if form == "archive":
        members = {f"cifar-10-batches-py/{k}": v for k, v in files.items()}
        path = write_tar(tmp_path / "my-cifar10.tar.gz", members)
    else:
        write_tree(tmp_path / "cifar-10-batches-py", files)
        path = tmp_path / "cifar-10-batches-py" if form == "extracted" else tmp_path
    data = load_cifar10(path)
    assert sorted(data) == ["test", "train"]
    for split in ("train", "test"):
        assert_split(data[split], *expected[split], CIFAR10_CLASSES)
    assert data["train"].images.shape == (15, 32, 32, 3)


@pytest.mark.parametrize("form", ["archive", "extracted"])
def test_cifar10_binary(tmp_path, rng, form):
    files, expected = cifar10_binary_files(rng)
    if form == "archive":
        members = {f"cifar-10-batches-bin/{k}": v for k, v in files.items()}
        path = write_tar(tmp_path / "cifar-10-binary.tar.gz", members)
    else:
        path = write_tree(tmp_path / "data" / "cifar-10-batches-bin", files).parent
    data = load_cifar10(path)
    for split in ("train", "test"):
        assert_split(data[split], *expected[split], CIFAR10_CLASSES)


@pytest.mark.parametrize("labels", ["fine", "coarse"])
@pytest.mark.parametrize("version", ["python", "binary"])
def test_cifar100(tmp_path, rng, labels, version):
    if version == "python":
        files, expected = cifar100_python_files(rng)
        members = {f"cifar-100-python/{k}": v for k, v in files.items()}
    else:
        files, expected = cifar100_binary_files(rng)
        members = {f"cifar-100-binary/{k}": v for k, v in files.items()}
    path = write_tar(tmp_path / "c100.tar.gz", members)
    data = load_cifar100(path, labels=labels)
    count = 100 if labels == "fine" else 20
    names = [f"{labels}{i}" for i in range(count)]
    for split in ("train", "test"):
        x, fine, coarse = expected[split]
        assert_split(data[split], x, fine if labels == "fine" else coarse, names)


def test_cifar10_refuses_cifar100_archive(tmp_path, rng):
    files, _ = cifar100_python_files(rng)
    path = write_tar(tmp_path / "c.tar.gz", {f"cifar-100-python/{k}": v for k, v in files.items()})
    with pytest.raises(ValueError, match="not CIFAR-10"):
        load_cifar10(path)


def test_cifar_official_archive_is_checksummed_first(tmp_path, rng, monkeypatch):
    files, _ = cifar10_python_files(rng)
    members = {f"cifar-10-batches-py/{k}": v for k, v in files.items()}
    write_tar(tmp_path / "cifar-10-python.tar.gz", members)
    parsed = []
    monkeypatch.setattr(readers_module, "_read_tar_members", lambda *a: parsed.append(a))
    with pytest.raises(ValueError, match=r"cifar-10-python\.tar\.gz.*170,498,071"):
        load_cifar10(tmp_path)
    assert not parsed  # rejected before the archive was opened
    monkeypatch.undo()
    assert len(load_cifar10(tmp_path, verify=False)["train"]) == 15


def test_verify_file_checks_sha256_after_size(tmp_path):
    f = tmp_path / "cifar-10-python.tar.gz"
    f.write_bytes(b"x" * 10)
    good = RemoteFile(f.name, "https://example.org/f", 10, sha256sum(f), "")
    verify_file(f, good)  # passes
    bad = RemoteFile(f.name, "https://example.org/f", 10, "0" * 64, "")
    with pytest.raises(ValueError, match=rf"{f}: sha256 {good.sha256} does not match"):
        verify_file(f, bad)
    with pytest.raises(FileNotFoundError, match=r"https://example\.org/f"):
        verify_file(tmp_path / "missing", good)


def test_cifar_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path / "nothing")
    message = str(err.value)
    official = OFFICIAL_FILES["cifar-10-python.tar.gz"]
    assert str(tmp_path / "nothing") in message
    assert official.url in message and official.sha256 in message and "170,498,071" in message


def test_cifar_missing_member_is_named(tmp_path, rng):
    files, _ = cifar10_python_files(rng)
    del files["data_batch_3"]
    members = {f"cifar-10-batches-py/{k}": v for k, v in files.items()}
    path = write_tar(tmp_path / "c.tar.gz", members)
    with pytest.raises(ValueError, match=r"c\.tar\.gz: missing .*data_batch_3"):
        load_cifar10(path)
    folder = write_tree(tmp_path / "cifar-10-batches-py", files)
    with pytest.raises(FileNotFoundError, match=rf"{folder / 'data_batch_3'}"):
        load_cifar10(folder)


def test_cifar_truncated_archive_is_named(tmp_path, rng):
    files, _ = cifar10_python_files(rng)
    members = {f"cifar-10-batches-py/{k}": v for k, v in files.items()}
    path = write_tar(tmp_path / "c.tar.gz", members)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"c\.tar\.gz: corrupt or truncated archive"):
        load_cifar10(path)


def test_cifar_truncated_binary_batch_is_named(tmp_path, rng):
    files, _ = cifar10_binary_files(rng)
    files["data_batch_2.bin"] = files["data_batch_2.bin"][:-5]
    folder = write_tree(tmp_path / "cifar-10-batches-bin", files)
    with pytest.raises(ValueError, match=r"data_batch_2\.bin: .* not a whole number of 3073"):
        load_cifar10(folder)


def test_cifar_malformed_batches_are_named(tmp_path, rng):
    files, _ = cifar10_python_files(rng)
    good = dict(files)
    files["data_batch_4"] = py2_pickle({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"data_batch_4: b'data' must be uint8 \(n, 3072\)"):
        load_cifar10(write_tree(tmp_path / "a" / "cifar-10-batches-py", files))
    files = dict(good)
    files["test_batch"] = py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(ValueError, match=r"test_batch: labels span \[0, 10\]"):
        load_cifar10(write_tree(tmp_path / "b" / "cifar-10-batches-py", files))
    files = dict(good)
    files["test_batch"] = py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(ValueError, match=r"test_batch: labels must be 2 ints"):
        load_cifar10(write_tree(tmp_path / "c" / "cifar-10-batches-py", files))


def test_cifar_tampered_pickle_runs_nothing(tmp_path, rng):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    files, _ = cifar10_python_files(rng)
    files["data_batch_2"] = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    folder = write_tree(tmp_path / "cifar-10-batches-py", files)
    with pytest.raises(ValueError, match=r"data_batch_2: refusing to unpickle.*system"):
        load_cifar10(folder)
    assert not (tmp_path / "pwned").exists()


def test_cifar_cache_reloads_without_reading(tmp_path, rng, monkeypatch):
    files, expected = cifar10_python_files(rng)
    path = write_tar(
        tmp_path / "c.tar.gz", {f"cifar-10-batches-py/{k}": v for k, v in files.items()}
    )
    first = load_cifar10(path, cache_dir=tmp_path / "cache")

    def fail(*args, **kwargs):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(readers_module, "_load_cifar", fail)
    second = load_cifar10(path, cache_dir=tmp_path / "cache")
    for split in ("train", "test"):
        assert_split(second[split], *expected[split], CIFAR10_CLASSES)
        assert_split(first[split], *expected[split], CIFAR10_CLASSES)


# ------------------------------------------------------------------------------------------
# SVHN
# ------------------------------------------------------------------------------------------


def write_svhn(path, images, digits, *, y_dtype=np.uint8):
    y = np.where(digits == 0, 10, digits).astype(y_dtype)[:, None]
    scipy.io.savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": y})
    return path


def test_svhn_reads_mat_files_and_maps_10_to_0(tmp_path, rng):
    x = random_images(rng, 7)
    digits = np.array([0, 1, 2, 9, 0, 5, 3])
    split = read_svhn_mat(write_svhn(tmp_path / "mine.mat", x, digits, y_dtype=np.float64))
    assert_split(split, x, digits, [str(d) for d in range(10)])


def test_load_svhn_splits_and_official_checksums(tmp_path, rng):
    expected = {}
    for name, n in (("train", 5), ("test", 3), ("extra", 4)):
        expected[name] = (random_images(rng, n), rng.integers(0, 10, n))
        write_svhn(tmp_path / f"{name}_32x32.mat", *expected[name])
    # The official names are checksummed: these small files fail, naming the file and the size.
    with pytest.raises(ValueError, match=r"train_32x32\.mat: .* bytes where .* 182,040,794"):
        load_svhn(tmp_path)
    data = load_svhn(tmp_path, splits=("train", "test", "extra"), verify=False)
    for name in ("train", "test", "extra"):
        assert_split(data[name], *expected[name])
    with pytest.raises(ValueError, match="unknown splits"):
        load_svhn(tmp_path, splits=("valid",))


def test_svhn_errors_name_the_file(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match=r"train_32x32\.mat.*ufldl"):
        read_svhn_mat(tmp_path / "train_32x32.mat")
    bad = tmp_path / "shape.mat"
    scipy.io.savemat(bad, {"X": np.zeros((32, 32, 4, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(ValueError, match=r"shape\.mat: X must be uint8 \(32, 32, 3, n\)"):
        read_svhn_mat(bad)
    bad = tmp_path / "labels.mat"
    scipy.io.savemat(bad, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [3]])})
    with pytest.raises(ValueError, match=r"labels\.mat: y must hold the labels 1\.\.10"):
        read_svhn_mat(bad)
    bad = tmp_path / "count.mat"
    scipy.io.savemat(bad, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(ValueError, match=r"count\.mat: y must be \(2, 1\)"):
        read_svhn_mat(bad)
    good = write_svhn(tmp_path / "good.mat", random_images(rng, 3), np.arange(3))
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(good.read_bytes()[:-2000])
    with pytest.raises(ValueError, match=r"truncated\.mat: not a readable MATLAB"):
        read_svhn_mat(truncated)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match=r"garbage\.mat: not a readable MATLAB"):
        read_svhn_mat(garbage)


# ------------------------------------------------------------------------------------------
# MNIST
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_mnist(tmp_path, rng, gz):
    expected = write_mnist(tmp_path, rng, gz=gz)
    if gz:  # the official .gz names are checksummed; these small files are not the real ones
        with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: .*9,912,422"):
            load_mnist(tmp_path)
    data = load_mnist(tmp_path, verify=False)
    for split in ("train", "test"):
        assert_split(data[split], *expected[split], [str(d) for d in range(10)])


def test_idx_header_checks(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    f = tmp_path / "images"
    f.write_bytes(idx_images(x))
    np.testing.assert_array_equal(read_idx_images(f), x[..., None])
    f.write_bytes(idx_images(x)[:-1])
    with pytest.raises(ValueError, match=rf"{f}: 39 bytes, but its header \[2, 3, 4\] needs 40"):
        read_idx_images(f)
    f.write_bytes(idx_images(x) + b"\x00")
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx_images(f)
    f.write_bytes(idx_labels(np.array([1, 2])))
    with pytest.raises(ValueError, match=rf"{f}: magic number 2049, expected 2051"):
        read_idx_images(f)
    f.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="magic number missing"):
        read_idx_labels(f)
    f.write_bytes(struct.pack(">i", 2051) + b"\x00\x00")
    with pytest.raises(ValueError, match="too short for an IDX header"):
        read_idx_images(f)
    g = tmp_path / "labels.gz"
    g.write_bytes(gzip.compress(idx_labels(np.array([4, 2, 9])))[:-6])
    with pytest.raises(ValueError, match=rf"{g}: corrupt or truncated gzip"):
        read_idx_labels(g)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx_labels(tmp_path / "nope")


def test_mnist_inconsistent_files(tmp_path, rng):
    write_mnist(tmp_path, rng, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(np.array([1, 2, 3])))
    with pytest.raises(ValueError, match=r"has 4 images but .*t10k-labels-idx1-ubyte has 3"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz.*ossci"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
        struct.pack(">2i", 2049, 4) + b"\x01\x02\x0a\x03"
    )
    with pytest.raises(ValueError, match=r"labels reach 10"):
        load_mnist(tmp_path)


# ------------------------------------------------------------------------------------------
# scikit-learn's digits
# ------------------------------------------------------------------------------------------


def test_digits_match_sklearn_with_a_fixed_stratified_split():
    from sklearn.datasets import load_digits as sklearn_digits

    start = time.perf_counter()
    data = load_digits()
    elapsed = time.perf_counter() - start
    ref = sklearn_digits()
    # Reference split: within each class, in file order, every 5th example is a test example.
    seen = np.zeros(10, int)
    is_test = np.zeros(len(ref.target), bool)
    for i, c in enumerate(ref.target):
        seen[c] += 1
        is_test[i] = seen[c] % 5 == 0
    scaled = np.round(ref.images * 255 / 16).astype(np.uint8)[..., None]
    assert_split(data["test"], scaled[is_test], ref.target[is_test], [str(d) for d in range(10)])
    assert_split(data["train"], scaled[~is_test], ref.target[~is_test])
    assert (len(data["train"]), len(data["test"])) == (1442, 355)
    counts = np.bincount(data["test"].labels)
    assert counts.min() >= 34 and counts.max() <= 37  # stratified: ~20% of every class
    assert data["train"].images.max() == 255 and data["train"].images.min() == 0
    assert elapsed < 1.0, f"load_digits took {elapsed:.2f} s"
    again = load_digits()
    np.testing.assert_array_equal(again["test"].images, data["test"].images)


def test_digits_fallback_through_sklearn(monkeypatch):
    """Where the CSV is not found directly, sklearn.datasets.load_digits gives the same arrays."""
    direct = load_digits(test_every=4)
    monkeypatch.setattr(readers_module.importlib.util, "find_spec", lambda name: None)
    fallback = load_digits(test_every=4)
    for split in ("train", "test"):
        assert_split(fallback[split], direct[split].images, direct[split].labels)


def test_missing_optional_dependencies_name_the_extra(tmp_path, rng, monkeypatch):
    from gapjax.data import load_image_folder

    svhn = write_svhn(tmp_path / "s.mat", random_images(rng, 1), np.array([1]))
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "0.png").write_bytes(b"\x89PNG")
    for module in ("scipy.io", "PIL.Image", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    monkeypatch.setattr(readers_module.importlib.util, "find_spec", lambda name: None)
    extra = r'pip install "gapjax\[data\]"'
    with pytest.raises(ImportError, match=rf"read_svhn_mat needs scipy.*{extra}"):
        read_svhn_mat(svhn)
    with pytest.raises(ImportError, match=rf"load_image_folder needs PIL.*{extra}"):
        load_image_folder(tmp_path / "imgs")
    with pytest.raises(ImportError, match=rf"load_digits needs sklearn.*{extra}"):
        load_digits()


def test_idx_header_whose_size_overflows_int64_names_the_file(tmp_path):
    f = tmp_path / "huge-images"
    f.write_bytes(struct.pack(">4I", 2051, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(12))
    with pytest.raises(ValueError, match=rf"{f}: 28 bytes, but its header .*\(truncated\)"):
        read_idx_images(f)
    g = tmp_path / "huge-labels"
    g.write_bytes(struct.pack(">2I", 2049, 2**32 - 1) + bytes(3))
    with pytest.raises(ValueError, match=rf"{g}: 11 bytes, but its header"):
        read_idx_labels(g)


# ------------------------------------------------------------------------------------------
# The corruption sweep (issue 20): truncate, flip bytes, delete a member, empty a folder.
# Each damaged file is rejected with a ValueError or FileNotFoundError naming it, or (a flipped
# pixel or label byte in a format without a checksum) it loads as arrays of the right form.
# ------------------------------------------------------------------------------------------


def damaged(data: bytes, count: int = 24):
    """Truncations of ``data`` at ``count`` points, and single-byte flips: every byte of the
    first 32 (headers), then ``count`` more spread over the rest."""
    step = max(1, len(data) // count)
    for n in range(0, len(data), step):
        yield data[:n]
    for i in [*range(min(32, len(data))), *range(32, len(data), step)]:
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        yield bytes(flipped)


def rejected_or_loaded(file, variants, load):
    """Writes each variant to ``file`` and loads; returns how many were rejected."""
    original, rejected = file.read_bytes(), 0
    for variant in variants:
        file.write_bytes(variant)
        try:
            out = load()
        except (ValueError, FileNotFoundError) as e:
            assert str(file) in str(e), str(e)
            rejected += 1
            continue
        for split in out.values() if isinstance(out, dict) else [out]:
            if isinstance(split, Split):
                assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
                assert len(split.images) == len(split.labels)
    file.write_bytes(original)
    return rejected


CIFAR_FORMS = {
    "cifar10-python": (cifar10_python_files, "cifar-10-batches-py", load_cifar10),
    "cifar10-binary": (cifar10_binary_files, "cifar-10-batches-bin", load_cifar10),
    "cifar100-python": (cifar100_python_files, "cifar-100-python", load_cifar100),
    "cifar100-binary": (cifar100_binary_files, "cifar-100-binary", load_cifar100),
}


@pytest.mark.parametrize("form", sorted(CIFAR_FORMS))
def test_cifar_files_truncated_or_flipped_are_rejected_naming_the_file(tmp_path, form):
    make, folder, load = CIFAR_FORMS[form]
    files, _ = make(np.random.default_rng(0))
    root = write_tree(tmp_path / folder, files)
    for name in files:
        rejected = rejected_or_loaded(root / name, damaged(files[name]), lambda: load(root))
        unused = name == "coarse_label_names.txt"  # read only with labels="coarse"
        assert rejected > 0 or unused, name  # at least the truncations to a few bytes
    archive = write_tar(tmp_path / "c.tar.gz", {f"{folder}/{k}": v for k, v in files.items()})
    rejected_or_loaded(archive, damaged(archive.read_bytes()), lambda: load(archive))


@pytest.mark.parametrize("form", sorted(CIFAR_FORMS))
def test_cifar_deleted_member_or_emptied_folder_is_named(tmp_path, form):
    make, folder, load = CIFAR_FORMS[form]
    files, _ = make(np.random.default_rng(0))
    for name in files:
        kept = {f"{folder}/{k}": v for k, v in files.items() if k != name}
        archive = write_tar(tmp_path / f"{name}.tar.gz", kept)
        with pytest.raises(ValueError, match=rf"{archive}: missing \['{folder}/{name}'\]"):
            load(archive)
        root = write_tree(tmp_path / name / folder, {k: files[k] for k in files if k != name})
        with pytest.raises(FileNotFoundError, match=str(root / name)):
            load(root)
    (tmp_path / "empty" / folder).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty" / folder)):
        load(tmp_path / "empty" / folder)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_truncated_or_flipped_are_rejected_naming_the_file(tmp_path, gz):
    x = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    for name, data, read in (
        ("images", idx_images(x), read_idx_images),
        ("labels", idx_labels(np.arange(7)), read_idx_labels),
    ):
        data = gzip.compress(data) if gz else data
        f = tmp_path / name
        f.write_bytes(data)
        assert (
            rejected_or_loaded(f, damaged(data, len(data)), lambda f=f, read=read: {"x": read(f)})
            > 0
        )


def test_mnist_deleted_file_or_emptied_folder_is_named(tmp_path, rng):
    write_mnist(tmp_path, rng, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'train-labels-idx1-ubyte'}"):
        load_mnist(tmp_path, verify=False)
    for f in tmp_path.iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'train-images-idx3-ubyte'}"):
        load_mnist(tmp_path, verify=False)


def test_svhn_file_truncated_or_flipped_is_rejected_naming_it(tmp_path, rng):
    f = write_svhn(tmp_path / "s.mat", random_images(rng, 2), np.arange(2))
    assert rejected_or_loaded(f, damaged(f.read_bytes()), lambda: read_svhn_mat(f)) > 0
    f.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'train_32x32.mat'}"):
        load_svhn(tmp_path, verify=False)


def test_cifar_class_names_that_are_not_utf8_name_the_meta_file(tmp_path, rng):
    files, _ = cifar10_python_files(rng)
    names = [b"\xff\xfe", *[f"c{i}".encode() for i in range(9)]]
    files["batches.meta"] = py2_pickle({b"label_names": names})
    root = write_tree(tmp_path / "cifar-10-batches-py", files)
    with pytest.raises(ValueError, match=rf"{root}/batches\.meta: label_names .* not UTF-8"):
        load_cifar10(root)
